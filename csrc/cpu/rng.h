// The counter-based RNG of the CPU kernels (definitions: fastsmall/masks.py), shared by the
// masked re-initialisation family (ke_reinit_cpu.cpp) and dropout (bn_act_dropout_cpu.cpp).
// Stateless: element e of a stream keyed (k0, k1) draws mix32(mix32(lo32(e) ^ k0) ^ (k1 + hi32(e))),
// the same bits as the Triton kernels and the reference. Force-inlined, so each instruction-set
// wrapper (isa.h) compiles the hash with its own vector width.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "../macros.h"

namespace fastsmall {

constexpr uint32_t kMixM1 = 0x7FEB352Du;
constexpr uint32_t kMixM2 = 0x846CA68Bu;
constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr uint32_t kTagReinitA = 0x52454941u;  // "REIA"
constexpr uint32_t kTagReinitB = 0x52454942u;  // "REIB"
constexpr uint32_t kTagWels = 0x57454C53u;     // "WELS"
constexpr uint32_t kTagDropout = 0x44524F50u;  // "DROP"

// lowbias32 (C. Wellons): bijective on uint32.
FASTSMALL_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMixM1;
  x ^= x >> 15;
  x *= kMixM2;
  x ^= x >> 16;
  return x;
}

struct Key {
  uint32_t k0 = 0, k1 = 0;
};

inline Key stream_key(std::initializer_list<uint32_t> words) {
  uint32_t h = 0;
  for (uint32_t w : words) h = mix32(h ^ w);
  return {h, mix32(h ^ kGolden)};
}

inline uint32_t lo32(int64_t v) { return static_cast<uint32_t>(static_cast<uint64_t>(v)); }
inline uint32_t hi32(int64_t v) { return static_cast<uint32_t>(static_cast<uint64_t>(v) >> 32); }

// The 23-bit draw of element e of a stream.
FASTSMALL_INLINE uint32_t draw_bit(Key k, uint64_t e) {
  const uint32_t h = mix32(static_cast<uint32_t>(e) ^ k.k0);
  return mix32(h ^ (k.k1 + static_cast<uint32_t>(e >> 32))) >> 9;
}

// A run of draws e0 .. e0 + n - 1 of a stream that does not cross a multiple of 2^32 (always, below
// 4 G elements) has one high word of the counter: then draw e0 + i is draw32(lo + i, k0, k1) with
// lo and k1 from in_one_high_word, a loop on 32-bit lanes only that vectorises (AVX2: 8 hashes per
// instruction) and can be fused with what the caller does with the draw. Otherwise the 64-bit
// counter of draw_bit is the fallback. Both give the same bits (tested across the edge).
struct Run32 {
  uint32_t lo, k0, k1;
};

FASTSMALL_INLINE bool in_one_high_word(Key k, int64_t e0, int64_t n, Run32& run) {
  const uint64_t u0 = static_cast<uint64_t>(e0);
  run = {static_cast<uint32_t>(u0), k.k0, k.k1 + static_cast<uint32_t>(u0 >> 32)};
  return static_cast<uint64_t>(run.lo) + static_cast<uint64_t>(n) <= (uint64_t(1) << 32);
}

FASTSMALL_INLINE uint32_t draw32(const Run32& run, uint32_t i) { return mix32(mix32((run.lo + i) ^ run.k0) ^ run.k1) >> 9; }

// The fallback, out of line: rare, and kept out of the inlined kernels' loops.
__attribute__((noinline)) inline void draw_bits_across_2_32(Key k, int64_t e0, int64_t n, uint32_t* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] = draw_bit(k, static_cast<uint64_t>(e0 + i));
}

// 23-bit draws of elements e0 .. e0 + n - 1 of a stream.
FASTSMALL_INLINE void draw_bits(Key k, int64_t e0, int64_t n, uint32_t* __restrict__ out) {
  Run32 run;
  if (in_one_high_word(k, e0, n, run)) {
    for (uint32_t i = 0; i < static_cast<uint32_t>(n); ++i) out[i] = draw32(run, i);
    return;
  }
  draw_bits_across_2_32(k, e0, n, out);
}

// T = #{k : (2k + 1) / 2^24 < rate}: WELS keeps iff k < T, dropout (rate = p) keeps iff k >= T.
inline uint32_t wels_threshold(double rate) {
  const double t = std::ceil((rate * 16777216.0 - 1.0) * 0.5);
  return static_cast<uint32_t>(std::min(8388608.0, std::max(0.0, t)));
}

}  // namespace fastsmall
