// CPU kernels of the masked re-initialisation family: ke_reinit_ (Knowledge
// Evolution's re-initialisation of the reset hypothesis) and masked_mul_ (DSD's
// sparse-phase step). Schemas: csrc/fastsmall.cpp. Definitions (mask kinds, RNG,
// initialisers): fastsmall/masks.py. Reference: fastsmall/reference.py.
//
// Layout: a list of contiguous tensors is one index space of prefix offsets;
// one at::parallel_for runs over all elements of all tensors (-fopenmp), each
// chunk walking the tensor segments it covers. Per segment, tiles of kTile
// elements: the 23-bit draws of the tile are hashed into a stack buffer (no
// state, no temporaries proportional to the model), turned into values, and
// stored where the element is not kept. KELS segments are split into the runs
// of reset elements (rows >= k_out, columns >= k_in), so kept blocks cost
// nothing; stored masks and WELS masks are tested per element and the result
// selected (kept elements are stored back unchanged, bit-exact: a branch-free
// select vectorises, a branch on a random mask mispredicts).
//
// The RNG and the float32 math are exactly those of the Triton kernels and the
// reference (only +, -, *, correctly rounded / and sqrt, no FMA: the baseline
// x86-64 target has none, and the AVX2 clones below are compiled without FMA), so all
// backends give bit-identical results.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../checks.h"
#include "../macros.h"
#include "dtypes.h"
#include "isa.h"
#include "rng.h"

namespace fastsmall {
namespace {

// The per-segment loops are FASTSMALL_SIMD_CLONES (isa.h): also compiled for AVX2, chosen at
// load time: 8 lanes and a native 32-bit multiply for the hash instead of SSE2's 4 lanes. AVX2
// without -mfma cannot contract a*b+c, so the results are the same bits as the SSE2 build.
// The helpers they call are force-inlined so they are compiled into each clone.

// The counter-based RNG (mix32, stream_key, draw_bits, wels_threshold) is in rng.h.

// ---- portable float32 math (same constants and operation order as masks.py) ------------

constexpr float kSqrt2 = 0x1.6a09e6p+0f;
constexpr float kLn2 = 0x1.62e430p-1f;
constexpr float kL3 = 0x1.555556p-2f, kL5 = 0x1.99999ap-3f, kL7 = 0x1.24924ap-3f, kL9 = 0x1.c71c72p-4f;
constexpr float kTwoPi = 0x1.921fb6p+2f;
constexpr float kC2 = -0x1.000000p-1f, kC4 = 0x1.555556p-5f, kC6 = -0x1.6c16c2p-10f, kC8 = 0x1.a01a02p-16f;
constexpr float kS3 = -0x1.555556p-3f, kS5 = 0x1.111112p-7f, kS7 = -0x1.a01a02p-13f, kS9 = 0x1.71de3ap-19f;

FASTSMALL_INLINE float uniform01(uint32_t k) { return static_cast<float>(2 * k + 1) * 0x1p-24f; }

// ln(u), u in (0, 1): u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln(m) = 2 atanh(f / (2 + f)).
FASTSMALL_INLINE float ke_log(float u) {
  int32_t bits;
  std::memcpy(&bits, &u, sizeof bits);
  int32_t e = (bits >> 23) - 127;
  const int32_t mbits = (bits & 0x7FFFFF) | 0x3F800000;
  float m;
  std::memcpy(&m, &mbits, sizeof m);
  const bool big = m > kSqrt2;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float s = f / (f + 2.0f);
  const float z = s * s;
  const float w = z * (kL3 + z * (kL5 + z * (kL7 + z * kL9)));
  const float lnm = (s + s * w) * 2.0f;
  return static_cast<float>(e) * kLn2 + lnm;
}

// cos(2 pi u), u in (0, 1) on the 2^-24 grid: exact reductions to [0, 1/8], then Taylor polynomials.
FASTSMALL_INLINE float ke_cos2pi(float u) {
  float a = std::fabs(u - 0.5f);  // cos(2 pi u) = -cos(2 pi a)
  const bool flip = a > 0.25f;
  a = flip ? 0.5f - a : a;  // cos(2 pi a) = -cos(2 pi (1/2 - a))
  const bool use_sin = a > 0.125f;
  const float b = use_sin ? 0.25f - a : a;  // cos(2 pi a) = sin(2 pi (1/4 - a))
  const float y = b * kTwoPi;
  const float y2 = y * y;
  const float c = 1.0f + y2 * (kC2 + y2 * (kC4 + y2 * (kC6 + y2 * kC8)));
  const float s = y + y * (y2 * (kS3 + y2 * (kS5 + y2 * (kS7 + y2 * kS9))));
  const float v = use_sin ? s : c;
  return flip ? v : -v;
}

// ---- per-tensor jobs -------------------------------------------------------------------

enum class Kind { Dense, Kels, Wels };
enum class Init { TorchDefault, KaimingNormal, Zero };

struct Job {
  void* data = nullptr;
  at::ScalarType dtype = at::kFloat;
  int64_t numel = 0;
  Kind kind = Kind::Dense;
  const uint8_t* mask = nullptr;  // bool bytes: any nonzero byte is True (torch's convention)
  int64_t k_out = 0, k_in = 0, row_len = 1, inner = 1;
  Key wels;
  uint32_t wels_t = 0;
  Key a, b;
  double scale = 0;  // b * 2^-23 (torch_default) or std (kaiming_normal); float32-exact unless float64
};

constexpr int64_t kTile = 256;
// Elements per grain of the parallel loop: ~80 us of single-thread work (parallel.h), from the
// measured cost (AMD EPYC AVX2, float32, one thread, 2026-12-07: bench/floor_ratio.py and
// `python bench/kernel_speed.py`): torch_default / zero ~0.5 ns per element (the fused hash),
// kaiming_normal ~2.9 (Box-Muller), masked_mul_ ~0.6. So the digits CNN (65 k weights) runs on the
// calling thread, ResNet-18's 11.7 M on every thread.
constexpr int64_t kReinitGrain = 131072, kKaimingGrain = 32768, kMaskGrain = 131072;

Init parse_init(c10::string_view init) {
  const std::string s(init.data(), init.size());
  if (s == "torch_default") return Init::TorchDefault;
  if (s == "kaiming_normal") return Init::KaimingNormal;
  if (s == "zero") return Init::Zero;
  TORCH_CHECK(false, "fastsmall: init must be one of ('torch_default', 'kaiming_normal', 'zero'), got '", s, "'");
}

int64_t columns(const at::Tensor& t) { return t.dim() >= 2 ? t.size(1) : 1; }

// Checks every argument (as fastsmall/masks.py::check_encoded does) and builds the jobs.
// `held` keeps contiguous copies of non-contiguous masks alive.
std::vector<Job> make_jobs(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& masks,
                           at::IntArrayRef kels_out, at::IntArrayRef kels_in, at::ArrayRef<double> wels_rate,
                           at::IntArrayRef wels_seed, std::optional<Init> init, std::vector<at::Tensor>& held) {
  const int64_t T = static_cast<int64_t>(tensors.size());
  check_list_length(masks.size(), T, "masks");
  check_list_length(kels_out.size(), T, "kels_out");
  check_list_length(kels_in.size(), T, "kels_in");
  check_list_length(wels_rate.size(), T, "wels_rate");
  check_list_length(wels_seed.size(), T, "wels_seed");
  std::vector<Job> jobs;
  jobs.reserve(T);
  for (int64_t i = 0; i < T; ++i) {
    const at::Tensor& t = tensors[i];
    check_floating(t, "tensors[", i, "]");
    // (the float8 types are floating too, but have no kernel)
    TORCH_CHECK(is_kernel_dtype(t.scalar_type()), "fastsmall: unsupported dtype ", t.scalar_type());
    TORCH_CHECK(t.device() == tensors[0].device(), "fastsmall: tensors[", i, "] is on ", t.device(),
                " but tensors[0] is on ", tensors[0].device());
    TORCH_CHECK(t.device().is_cpu(), "fastsmall: tensors[", i, "] is on ", t.device(), "; this kernel runs on CPU");
    TORCH_CHECK(t.is_contiguous(), "fastsmall: tensors[", i, "] must be contiguous (it is updated in place), got "
                "strides ", t.strides(), " for shape ", t.sizes());
    const std::optional<at::Tensor> m = masks.get(i);
    const bool dense = m.has_value() && m->defined();
    const int kinds = int(dense) + int(kels_out[i] != -1) + int(wels_rate[i] != -1.0);
    TORCH_CHECK(kinds == 1, "fastsmall: tensor ", i, " must have exactly one mask kind (a bool mask in masks[", i,
                "], kels_out[", i, "] != -1 or wels_rate[", i, "] != -1), got ", kinds);
    Job j;
    j.data = t.data_ptr();
    j.dtype = t.scalar_type();
    j.numel = t.numel();
    if (dense) {
      TORCH_CHECK(m->scalar_type() == at::kBool, "fastsmall: masks[", i, "] must be a bool tensor, got ",
                  m->scalar_type());
      TORCH_CHECK(m->sizes() == t.sizes(), "fastsmall: masks[", i, "] has shape ", m->sizes(), " but tensors[", i,
                  "] has shape ", t.sizes());
      TORCH_CHECK(m->device() == t.device(), "fastsmall: masks[", i, "] is on ", m->device(), " but tensors[", i,
                  "] is on ", t.device());
      held.push_back(m->contiguous());
      j.kind = Kind::Dense;
      j.mask = static_cast<const uint8_t*>(held.back().const_data_ptr());
    } else if (kels_out[i] != -1) {
      TORCH_CHECK(t.dim() >= 1, "fastsmall: kels_out[", i, "]: KELS needs a tensor with at least 1 dim, tensors[", i,
                  "] is 0-dim");
      TORCH_CHECK(kels_out[i] >= 0 && kels_out[i] <= t.size(0), "fastsmall: kels_out[", i, "] = ", kels_out[i],
                  " is out of range: tensors[", i, "] has shape ", t.sizes(), ", expected 0 <= k_out <= ", t.size(0));
      TORCH_CHECK(kels_in[i] >= 0 && kels_in[i] <= columns(t), "fastsmall: kels_in[", i, "] = ", kels_in[i],
                  " is out of range: tensors[", i, "] has shape ", t.sizes(), ", expected 0 <= k_in <= ", columns(t));
      j.kind = Kind::Kels;
      j.k_out = kels_out[i];
      j.k_in = kels_in[i];
      j.inner = 1;
      for (int64_t d = 2; d < t.dim(); ++d) j.inner *= t.size(d);
      j.row_len = columns(t) * j.inner;
    } else {
      const double rate = wels_rate[i];
      TORCH_CHECK(rate >= 0.0 && rate <= 1.0, "fastsmall: wels_rate[", i, "] = ", rate, " is outside [0, 1]");
      j.kind = Kind::Wels;
      j.wels = stream_key({kTagWels, lo32(wels_seed[i]), hi32(wels_seed[i])});
      j.wels_t = wels_threshold(rate);
    }
    if (init.has_value() && *init != Init::Zero) {
      TORCH_CHECK(t.dim() >= 2, "fastsmall: init=", *init == Init::TorchDefault ? "'torch_default'" : "'kaiming_normal'",
                  " needs tensors with at least 2 dims (fan_in = size(1) * prod(size(2:))), tensors[", i,
                  "] has shape ", t.sizes(), "; use init='zero' or leave it out");
      const int64_t fan_in = t.numel() == 0 ? 0 : t.numel() / t.size(0);
      if (fan_in > 0) {
        const bool f64 = t.scalar_type() == at::kDouble;
        if (*init == Init::TorchDefault) {
          const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
          j.scale = (f64 ? bound : static_cast<double>(static_cast<float>(bound))) * 0x1p-23;
        } else {
          const double sd = std::sqrt(2.0 / static_cast<double>(fan_in));
          j.scale = f64 ? sd : static_cast<double>(static_cast<float>(sd));
        }
      }
    }
    jobs.push_back(j);
  }
  return jobs;
}

// ---- tiles -------------------------------------------------------------------------------

// The torch_default value of a draw: U(-bound, bound) on the odd multiples of 2^-23 * bound.
template <typename acc_t>
FASTSMALL_INLINE acc_t uniform_value(uint32_t k, acc_t scale) {
  const int32_t s = static_cast<int32_t>(2 * k + 1) - (1 << 23);  // odd, in (-2^23, 2^23)
  return static_cast<acc_t>(s) * scale;
}

// Re-initialisation values of elements e0 .. e0 + n - 1 (n <= kTile), computed in acc_t and
// stored as scalar_t. torch_default, the official KE reset, is one fused pass (hash, scale, store:
// no buffer of draws between them); kaiming_normal's Box-Muller goes through two draw buffers.
template <Init I, typename scalar_t>
FASTSMALL_INLINE void draw_values(const Job& j, int64_t e0, int64_t n, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;  // float, or double for double
  const acc_t c = static_cast<acc_t>(j.scale);
  if constexpr (I == Init::Zero) {
    for (int64_t i = 0; i < n; ++i) out[i] = scalar_t(0);
  } else if constexpr (I == Init::TorchDefault) {
    Run32 run;
    if (in_one_high_word(j.a, e0, n, run)) {
      for (uint32_t i = 0; i < static_cast<uint32_t>(n); ++i)
        out[i] = static_cast<scalar_t>(uniform_value(draw32(run, i), c));
      return;
    }
    uint32_t k[kTile];
    draw_bits_across_2_32(j.a, e0, n, k);
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(uniform_value(k[i], c));
  } else {
    uint32_t ka[kTile], kb[kTile];
    draw_bits(j.a, e0, n, ka);
    draw_bits(j.b, e0, n, kb);
    for (int64_t i = 0; i < n; ++i) {
      const float z = std::sqrt(-2.0f * ke_log(uniform01(ka[i]))) * ke_cos2pi(uniform01(kb[i]));
      out[i] = static_cast<scalar_t>(static_cast<acc_t>(z) * c);
    }
  }
}

// Keep flags of elements e0 .. e0 + n - 1 of a Dense or WELS tensor.
FASTSMALL_INLINE void keep_flags(const Job& j, int64_t e0, int64_t n, uint8_t* __restrict__ keep) {
  if (j.kind == Kind::Dense) {
    // Normalised to 0/1: a bool tensor made with .view(torch.bool) can hold any byte, and
    // select_store builds its blend mask from the flag, so a 2 would mix bits of both values.
    for (int64_t i = 0; i < n; ++i) keep[i] = j.mask[e0 + i] != 0;
  } else {
    uint32_t k[kTile];
    draw_bits(j.wels, e0, n, k);
    for (int64_t i = 0; i < n; ++i) keep[i] = k[i] < j.wels_t;
  }
}

// The first run [a, b) of not-kept elements of a KELS tensor in [e, hi), or false if there is
// none. A plain function, not a callback: a lambda's body would be a function of its own, outside
// the target_clones of the segment loops, so it would not get their AVX2 code (it did not:
// 2.2 ns per element against 1.1 for WELS, which hashes twice as much).
FASTSMALL_INLINE bool next_kels_run(const Job& j, int64_t e, int64_t hi, int64_t& a, int64_t& b) {
  while (e < hi) {
    const int64_t o = e / j.row_len;
    if (o >= j.k_out) {  // every remaining row is reset
      a = e;
      b = hi;
      return true;
    }
    const int64_t row_end = std::min(hi, (o + 1) * j.row_len);
    const int64_t from = std::max(e, o * j.row_len + j.k_in * j.inner);
    if (from < row_end) {
      a = from;
      b = row_end;
      return true;
    }
    e = row_end;
  }
  return false;
}

template <size_t N> struct bits_of;
template <> struct bits_of<2> { using type = uint16_t; };
template <> struct bits_of<4> { using type = uint32_t; };
template <> struct bits_of<8> { using type = uint64_t; };

// w[i] = kept ? w[i] : fresh[i] as a bitwise blend: branch-free, so it vectorises (a branch on
// a random mask mispredicts half the time), and a kept element is stored back with exactly its
// bits (no arithmetic on it). `kept` is all ones or all zeros; the one blend both selects share.
template <typename scalar_t, typename bits_t = typename bits_of<sizeof(scalar_t)>::type>
FASTSMALL_INLINE void blend_at(scalar_t* __restrict__ w, const scalar_t* __restrict__ fresh, int64_t i,
                               bits_t kept) {
  bits_t old, nu;
  std::memcpy(&old, w + i, sizeof old);
  std::memcpy(&nu, fresh + i, sizeof nu);
  const bits_t out = static_cast<bits_t>((old & kept) | (nu & static_cast<bits_t>(~kept)));
  std::memcpy(w + i, &out, sizeof out);
}

// w[i] = keep[i] ? w[i] : fresh[i], keep[i] a 0 / 1 flag.
template <typename scalar_t>
FASTSMALL_INLINE void select_store(scalar_t* __restrict__ w, const uint8_t* __restrict__ keep,
                                   const scalar_t* __restrict__ fresh, int64_t n) {
  using bits_t = typename bits_of<sizeof(scalar_t)>::type;
  for (int64_t i = 0; i < n; ++i)
    blend_at(w, fresh, i, static_cast<bits_t>(bits_t(0) - static_cast<bits_t>(keep[i])));  // ones where kept
}

// WELS: w[i] = keep(e0 + i) ? w[i] : fresh[i], the keep draw hashed in the same pass as the blend
// (no buffer of flags; the blend mask is the comparison's all-ones lane).
template <typename scalar_t>
FASTSMALL_INLINE void wels_select_store(const Job& j, int64_t e0, int64_t n, scalar_t* __restrict__ w,
                                        const scalar_t* __restrict__ fresh) {
  using bits_t = typename bits_of<sizeof(scalar_t)>::type;
  Run32 run;
  if (!in_one_high_word(j.wels, e0, n, run)) {
    uint8_t keep[kTile];
    keep_flags(j, e0, n, keep);
    select_store(w, keep, fresh, n);
    return;
  }
  for (uint32_t i = 0; i < static_cast<uint32_t>(n); ++i)
    blend_at(w, fresh, i, draw32(run, i) < j.wels_t ? static_cast<bits_t>(~bits_t(0)) : bits_t(0));
}

// Elements [lo, hi) of a Dense or WELS tensor, tile by tile: fresh(e0, n, values) fills the
// tile's candidate values, then w = keep ? w : values.
template <typename scalar_t, typename Fresh>
FASTSMALL_INLINE void masked_tiles(const Job& j, int64_t lo, int64_t hi, Fresh&& fresh) {
  scalar_t* __restrict__ w = static_cast<scalar_t*>(j.data);
  uint8_t keep[kTile];
  scalar_t values[kTile];
  for (int64_t e0 = lo; e0 < hi; e0 += kTile) {
    const int64_t n = std::min(kTile, hi - e0);
    fresh(e0, n, values);
    if (j.kind == Kind::Wels) {
      wels_select_store(j, e0, n, w + e0, values);
    } else {
      keep_flags(j, e0, n, keep);
      select_store(w + e0, keep, values, n);
    }
  }
}

// ke_reinit_ over elements [lo, hi) of one tensor. KELS: the reset runs are written straight
// from the draws; Dense / WELS: a tile of values, then the select.
template <Init I, typename scalar_t>
FASTSMALL_SIMD_CLONES void reinit_segment(const Job& j, int64_t lo, int64_t hi) {
  scalar_t* __restrict__ w = static_cast<scalar_t*>(j.data);
  if (j.kind == Kind::Kels) {
    for (int64_t a, b, e = lo; next_kels_run(j, e, hi, a, b); e = b) {
      for (int64_t e0 = a; e0 < b; e0 += kTile) draw_values<I>(j, e0, std::min(kTile, b - e0), w + e0);
    }
    return;
  }
  masked_tiles<scalar_t>(j, lo, hi, [&](int64_t e0, int64_t n, scalar_t* __restrict__ fresh) {
    draw_values<I>(j, e0, n, fresh);
  });
}

// masked_mul_ over elements [lo, hi) of one tensor: not-kept w becomes w * 0.
template <typename scalar_t>
FASTSMALL_SIMD_CLONES void mul_segment(const Job& j, int64_t lo, int64_t hi) {
  scalar_t* __restrict__ w = static_cast<scalar_t*>(j.data);
  const scalar_t zero(0);
  if (j.kind == Kind::Kels) {
    for (int64_t a, b, e = lo; next_kels_run(j, e, hi, a, b); e = b) {
      for (int64_t i = a; i < b; ++i) w[i] = static_cast<scalar_t>(w[i] * zero);
    }
    return;
  }
  masked_tiles<scalar_t>(j, lo, hi, [&](int64_t e0, int64_t n, scalar_t* __restrict__ zeroed) {
    for (int64_t i = 0; i < n; ++i) zeroed[i] = static_cast<scalar_t>(w[e0 + i] * zero);
  });
}

// One parallel loop over all elements of all jobs; seg(job, lo, hi) handles one tensor's part.
template <typename Seg>
void for_all_elements(const std::vector<Job>& jobs, int64_t grain, Seg&& seg) {
  std::vector<int64_t> offsets(jobs.size() + 1, 0);
  for (size_t t = 0; t < jobs.size(); ++t) offsets[t + 1] = offsets[t] + jobs[t].numel;
  const int64_t total = offsets.back();
  if (total == 0) return;
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    // first tensor whose range contains `begin` (empty tensors have empty ranges and are skipped)
    size_t t = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const int64_t stop = std::min(end, offsets[t + 1]);
      if (stop > pos) seg(jobs[t], pos - offsets[t], stop - offsets[t]);
      pos = std::max(pos, stop);
    }
  });
}

// ---- ops -------------------------------------------------------------------------------------

void ke_reinit_cpu(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& masks,
                   at::IntArrayRef kels_out, at::IntArrayRef kels_in, at::ArrayRef<double> wels_rate,
                   at::IntArrayRef wels_seed, int64_t seed, int64_t generation, c10::string_view init_name) {
  const Init init = parse_init(init_name);
  std::vector<at::Tensor> held;
  std::vector<Job> jobs = make_jobs(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, init, held);
  for (size_t i = 0; i < jobs.size(); ++i) {
    const uint32_t idx = static_cast<uint32_t>(i);
    jobs[i].a = stream_key({kTagReinitA, lo32(seed), hi32(seed), lo32(generation), hi32(generation), idx});
    jobs[i].b = stream_key({kTagReinitB, lo32(seed), hi32(seed), lo32(generation), hi32(generation), idx});
  }
  const int64_t grain = init == Init::KaimingNormal ? kKaimingGrain : kReinitGrain;
  for_all_elements(jobs, grain, [&](const Job& j, int64_t lo, int64_t hi) {
    dispatch_floating(j.dtype, "ke_reinit_cpu", [&](auto tag) {
      using scalar_t = decltype(tag);
      switch (init) {
        case Init::TorchDefault: reinit_segment<Init::TorchDefault, scalar_t>(j, lo, hi); break;
        case Init::KaimingNormal: reinit_segment<Init::KaimingNormal, scalar_t>(j, lo, hi); break;
        case Init::Zero: reinit_segment<Init::Zero, scalar_t>(j, lo, hi); break;
      }
    });
  });
}

void masked_mul_cpu(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& masks,
                    at::IntArrayRef kels_out, at::IntArrayRef kels_in, at::ArrayRef<double> wels_rate,
                    at::IntArrayRef wels_seed) {
  std::vector<at::Tensor> held;
  const std::vector<Job> jobs =
      make_jobs(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, std::nullopt, held);
  for_all_elements(jobs, kMaskGrain, [&](const Job& j, int64_t lo, int64_t hi) {
    dispatch_floating(j.dtype, "masked_mul_cpu", [&](auto tag) { mul_segment<decltype(tag)>(j, lo, hi); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("ke_reinit_", &ke_reinit_cpu);
  m.impl("masked_mul_", &masked_mul_cpu);
}

}  // namespace fastsmall
