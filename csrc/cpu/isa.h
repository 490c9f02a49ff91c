// Instruction sets of the CPU kernels: which ones this build can target, which one this CPU has
// (decided once, at first use), and how a kernel is compiled for each.
//
// The build stays portable (no -march=native): the kernels are compiled for the baseline
// (x86-64: SSE2) and, through function attributes, for AVX2+FMA and AVX-512; the widest one the
// CPU supports is picked at run time. Two mechanisms:
//   * FASTSMALL_SIMD_CLONES: GCC target_clones (an ifunc resolved at load time), for plain loops
//     the auto-vectoriser widens by itself (ke_reinit_cpu.cpp);
//   * call_isa<Kernel, BYTES>: explicit wrappers per instruction set for kernels written on
//     vector types of BYTES bytes (simd.h), chosen from simd_bytes() (distribution_align_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "../macros.h"

#if defined(__x86_64__) || defined(__i386__)
#define FASTSMALL_X86 1
#define FASTSMALL_AVX2 __attribute__((target("avx2,fma")))
#define FASTSMALL_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#else
#define FASTSMALL_X86 0
#define FASTSMALL_AVX2
#define FASTSMALL_AVX512
#endif

// target_clones needs GCC's ifunc support (x86-64 Linux); AVX2 only, without FMA, so that no
// a*b+c is contracted and both clones compute the same bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTSMALL_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTSMALL_SIMD_CLONES
#endif

namespace fastsmall {

// Vector bytes of the widest instruction set this CPU has: 64 (AVX-512), 32 (AVX2+FMA) or 16.
// FASTSMALL_SIMD_BYTES=16|32|64 caps it (tests use it to cover every instantiation). Read once.
inline int simd_bytes() {
  static const int bytes = [] {
    int best = 16;
#if FASTSMALL_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 32;
    if (best == 32 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
      best = 64;
#endif
    if (const char* cap = std::getenv("FASTSMALL_SIMD_BYTES")) {
      const int c = std::atoi(cap);
      if (c == 16 || c == 32 || c == 64) best = std::min(best, c);
    }
    return best;
  }();
  return bytes;
}

// f(std::integral_constant<int, BYTES>{}) for BYTES = simd_bytes().
template <typename F>
FASTSMALL_INLINE void dispatch_simd_bytes(F&& f) {
  const int bytes = simd_bytes();
  if (bytes == 64) return f(std::integral_constant<int, 64>{});
  if (bytes == 32) return f(std::integral_constant<int, 32>{});
  return f(std::integral_constant<int, 16>{});
}

// One wrapper per instruction set around Kernel::run<BYTES>, compiled with the matching target
// attribute. Kernel::run and everything it calls are force-inlined (FASTSMALL_INLINE), so the
// whole kernel is compiled for that instruction set.
template <typename Kernel, typename... Args>
void isa_base(Args&&... args) {
  Kernel::template run<16>(std::forward<Args>(args)...);
}
template <typename Kernel, typename... Args>
FASTSMALL_AVX2 void isa_avx2(Args&&... args) {
  Kernel::template run<32>(std::forward<Args>(args)...);
}
template <typename Kernel, typename... Args>
FASTSMALL_AVX512 void isa_avx512(Args&&... args) {
  Kernel::template run<64>(std::forward<Args>(args)...);
}

// Kernel::run<BYTES>(args...) through the wrapper of BYTES (from dispatch_simd_bytes).
template <typename Kernel, int BYTES, typename... Args>
FASTSMALL_INLINE void call_isa(Args&&... args) {
  if constexpr (BYTES == 64) {
    isa_avx512<Kernel>(std::forward<Args>(args)...);
  } else if constexpr (BYTES == 32) {
    isa_avx2<Kernel>(std::forward<Args>(args)...);
  } else {
    isa_base<Kernel>(std::forward<Args>(args)...);
  }
}

}  // namespace fastsmall
