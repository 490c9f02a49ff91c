// The SIMD toolkit of the CPU kernels written on explicit vectors (distribution_align_cpu.cpp):
// the vector type, its exp and log, horizontal reductions, tile transposes between row-major
// rows and a transposed [C][R] layout, and aligned scratch buffers.
//
// Vectors are GCC/Clang vector types of BYTES bytes: explicit vector code, independent of the
// auto-vectoriser, that one source compiles for each instruction set (isa.h: SSE2 16 bytes,
// AVX2+FMA 32, AVX-512 64). Comparisons give integer vectors of the same width, and `c ? a : b`
// on them is a lane-wise blend. Everything here is force-inlined, so it is compiled for the
// instruction set of the isa.h wrapper it ends up in.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#include "../macros.h"
#include "isa.h"

// The vector helpers take and return vector types by value; they are always inlined, so GCC's
// note that such calls would have a different ABI without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastsmall {

// ---- vector type and math ------------------------------------------------------------------------
// The alignment is spelled out because a baseline compile caps vector types at 16 bytes.

template <typename acc_t, int BYTES>
struct Simd {
  typedef acc_t V __attribute__((vector_size(BYTES), aligned(BYTES)));
  static constexpr int W = BYTES / static_cast<int>(sizeof(acc_t));
};

template <typename V, typename T>
FASTSMALL_INLINE V splat(T x) {
  return V{} + x;
}

template <typename T, typename V>
FASTSMALL_INLINE T bit_cast_vec(const V& v) {
  static_assert(sizeof(T) == sizeof(V), "same size");
  T out;
  std::memcpy(&out, &v, sizeof(T));
  return out;
}

// exp(x) for x <= 0 (every softmax argument z - max z is), float32 lanes, within ~1 ulp of expf
// (measured 8e-8 relative): Cephes' expf (Cody-Waite reduction by ln 2, degree-6 polynomial)
// without branches or float-to-int conversions. Returns 0 below log(FLT_MIN) (where expf is
// denormal or 0, negligible next to the row's maximum, which is 1); NaN stays NaN.
template <typename V>
FASTSMALL_INLINE V exp_nonpos_f32(V x) {
  using I = decltype(x < x);
  const float kLo = -87.33654475f;  // log(FLT_MIN)
  const I under = x < kLo;
  const V xc = under ? splat<V>(kLo) : x;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick; its integer value sits in the low mantissa bits.
  const V shifted = xc * 1.44269504088896341f + 12582912.0f;
  const V n = shifted - 12582912.0f;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I scale_bits = (bit_cast_vec<I>(shifted) - (0x4B400000 - 127)) << 23;  // 2^n, n >= -126
  const V y = p * bit_cast_vec<V>(scale_bits);
  return under ? V{} : y;
}

// log(x) for float32 lanes, x >= FLT_MIN (here: row sums of exp, >= 1), Cephes' logf (~1 ulp);
// +inf and NaN are returned as they are.
template <typename V>
FASTSMALL_INLINE V log_f32(V x) {
  using I = decltype(x < x);
  const I bits = bit_cast_vec<I>(x);
  V e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, V);  // x = m * 2^e, m in [0.5, 1)
  V m = bit_cast_vec<V>((bits & 0x807fffff) | 0x3f000000);
  const I small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const V z = m * m;
  V y = m * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f - 0.5f * z;
  const V out = m + y + e * 0.693359375f;
  const I finite = x < std::numeric_limits<float>::infinity();  // false for +inf and NaN
  return finite ? out : x;
}

// The element type of a vector type.
template <typename V>
using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V&>()[0])>>;

template <typename V>
FASTSMALL_INLINE V exp_nonpos(V x) {
  if constexpr (std::is_same_v<lane_t<V>, float>) {
    return exp_nonpos_f32(x);
  } else {  // float64: std::exp per lane
    V y = V{};
    for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(lane_t<V>)); ++l) y[l] = std::exp(x[l]);
    return y;
  }
}

template <typename V>
FASTSMALL_INLINE V log_pos(V x) {
  if constexpr (std::is_same_v<lane_t<V>, float>) {
    return log_f32(x);
  } else {
    V y = V{};
    for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(lane_t<V>)); ++l) y[l] = std::log(x[l]);
    return y;
  }
}

// log(1 + x) for x >= 0 to a few ulp relative (Goldberg's trick: u = 1 + x rounds, but
// log(u) * x / (u - 1) cancels the rounding of u). Used where 1 + x would lose a small x: the
// cross-entropy of a confident row is log1p of the other classes' exp sum.
template <typename V>
FASTSMALL_INLINE V log1p_nonneg(V x) {
  const V u = x + lane_t<V>(1);
  const V d = u - lane_t<V>(1);
  return d == V{} ? x : log_pos(u) * (x / d);
}

// ---- horizontal reductions and loads -------------------------------------------------------------
// Over lanes in a fixed order, so results do not depend on the instruction set's width beyond
// the lane count.

template <typename V>
FASTSMALL_INLINE lane_t<V> hmax(const V& v) {
  lane_t<V> m = v[0];
  for (int l = 1; l < static_cast<int>(sizeof(V) / sizeof(lane_t<V>)); ++l) m = v[l] > m ? v[l] : m;
  return m;
}

template <typename V>
FASTSMALL_INLINE lane_t<V> hsum(const V& v) {
  lane_t<V> s = 0;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(lane_t<V>)); ++l) s += v[l];
  return s;
}

template <typename V>
FASTSMALL_INLINE V load_vec(const lane_t<V>* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// ---- tile transposes -----------------------------------------------------------------------------
// A tile is R rows of a row-major [*, C] array held transposed, [C][R] in the compute type, so
// that each vector holds one column of several rows. For full float32 tiles, AVX2 and up move
// them with 8x8 register transposes; otherwise, and for partial tiles, element by element.

#if FASTSMALL_X86
FASTSMALL_AVX2 FASTSMALL_INLINE void transpose8x8(__m256 (&v)[8]) {
  const __m256 a0 = _mm256_unpacklo_ps(v[0], v[1]), a1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 a2 = _mm256_unpacklo_ps(v[2], v[3]), a3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 a4 = _mm256_unpacklo_ps(v[4], v[5]), a5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 a6 = _mm256_unpacklo_ps(v[6], v[7]), a7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 b1 = _mm256_shuffle_ps(a0, a2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 b3 = _mm256_shuffle_ps(a1, a3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 b5 = _mm256_shuffle_ps(a4, a6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 b7 = _mm256_shuffle_ps(a5, a7, _MM_SHUFFLE(3, 2, 3, 2));
  v[0] = _mm256_permute2f128_ps(b0, b4, 0x20);
  v[1] = _mm256_permute2f128_ps(b1, b5, 0x20);
  v[2] = _mm256_permute2f128_ps(b2, b6, 0x20);
  v[3] = _mm256_permute2f128_ps(b3, b7, 0x20);
  v[4] = _mm256_permute2f128_ps(b0, b4, 0x31);
  v[5] = _mm256_permute2f128_ps(b1, b5, 0x31);
  v[6] = _mm256_permute2f128_ps(b2, b6, 0x31);
  v[7] = _mm256_permute2f128_ps(b3, b7, 0x31);
}

// A full tile of R rows of z (row-major, C columns) -> t ([C][R]).
template <int R>
FASTSMALL_AVX2 FASTSMALL_INLINE void transpose_load_avx2(const float* z, int64_t C, float* t) {
  const int64_t C8 = C & ~int64_t(7);
  const int rem = static_cast<int>(C - C8);
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int r0 = 0; r0 < R; r0 += 8) {
    const float* zr = z + r0 * C;
    __m256 v[8];
    for (int64_t j0 = 0; j0 < C8; j0 += 8) {
      for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(zr + k * C + j0);
      transpose8x8(v);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(t + (j0 + k) * R + r0, v[k]);
    }
    if (rem) {  // the last C % 8 columns: masked loads never touch memory past a row
      for (int k = 0; k < 8; ++k) v[k] = _mm256_maskload_ps(zr + k * C + C8, tail);
      transpose8x8(v);
      for (int k = 0; k < rem; ++k) _mm256_storeu_ps(t + (C8 + k) * R + r0, v[k]);
    }
  }
}

// Floats of the staging buffer of load_tile_avx2 / store_tile_avx2 (64 KiB on the stack: every
// tile of the kernels, R = 32 poses of up to 512 values, fits).
constexpr int64_t kStageFloats = 16384;

// A full tile of R rows of z (row-major, C columns) -> t ([C][R]). Not inlined: its callers are
// compiled for the baseline ISA before they are inlined into the AVX2/AVX-512 wrappers. When C is
// not a multiple of 8 the rows start off 32-byte boundaries and every other 8-float access
// straddles two cache lines: such a tile is first copied, as the one contiguous block it is
// (R * C floats), into an aligned staging buffer in L1 (part_kcs_gram's compact gradient, C = 131:
// its load was the largest part of the backward).
template <int R>
FASTSMALL_AVX2 __attribute__((noinline)) void load_tile_avx2(const float* z, int64_t C, float* t) {
  // The next tile of the same rows (a chunk's tiles are consecutive in memory): its lines are
  // requested while this one is transposed (measured: bone_decompose forward 0.82x the time on one
  // thread; a prefetch past the end of the tensor is a hint, it never faults).
  for (int64_t b = 0; b < R * C * 4; b += 64) _mm_prefetch(reinterpret_cast<const char*>(z + R * C) + b, _MM_HINT_T0);
  if (C % 8 == 0 || R * C > kStageFloats) return transpose_load_avx2<R>(z, C, t);
  alignas(64) float stage[kStageFloats];
  std::memcpy(stage, z, sizeof(float) * R * C);
  transpose_load_avx2<R>(stage, C, t);
}

// t ([C][R]) -> a full tile of R rows of out (row-major, C columns).
template <int R>
FASTSMALL_AVX2 FASTSMALL_INLINE void transpose_store_avx2(const float* t, int64_t C, float* out) {
  const int64_t C8 = C & ~int64_t(7);
  for (int r0 = 0; r0 < R; r0 += 8) {
    float* orow = out + r0 * C;
    __m256 v[8];
    for (int64_t j0 = 0; j0 < C8; j0 += 8) {
      for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(t + (j0 + k) * R + r0);
      transpose8x8(v);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(orow + k * C + j0, v[k]);
    }
    for (int k = 0; k < 8; ++k)
      for (int64_t j = C8; j < C; ++j) orow[k * C + j] = t[j * R + r0 + k];
  }
}

// t ([C][R]) -> a full tile of R rows of out (row-major, C columns). The same staging when C is not a
// multiple of 8 (part_kcs_gram compact: C = 131, KCS joints: C = 51; measured: the straddling stores
// took 2x a fill of the same bytes): transposed into the aligned buffer, then one block copy.
template <int R>
FASTSMALL_AVX2 __attribute__((noinline)) void store_tile_avx2(const float* t, int64_t C, float* out) {
  if (C % 8 == 0 || R * C > kStageFloats) return transpose_store_avx2<R>(t, C, out);
  alignas(64) float stage[kStageFloats];
  transpose_store_avx2<R>(t, C, stage);
  std::memcpy(out, stage, sizeof(float) * R * C);
}
#endif

// Rows [0, n) of z (row-major, C columns) -> t ([C][R]); rows n..R-1 are 0.
template <int R, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void load_tile(const scalar_t* __restrict__ z, int64_t n, int64_t C, acc_t* __restrict__ t) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < C; ++j) t[j * R + r] = r < n ? static_cast<acc_t>(z[r * C + j]) : acc_t(0);
}

// Rows [0, n) of t ([C][R]) -> out (row-major, C columns).
template <int R, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void store_tile(const acc_t* __restrict__ t, int64_t n, int64_t C, scalar_t* __restrict__ out) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < C; ++j) out[r * C + j] = static_cast<scalar_t>(t[j * R + r]);
}

// load_tile / store_tile, with register transposes for full float32 tiles on AVX2 and up.
template <int R, int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void load_rows(const scalar_t* z, int64_t n, int64_t C, acc_t* t) {
#if FASTSMALL_X86
  if constexpr (BYTES >= 32 && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (n == R) return load_tile_avx2<R>(z, C, t);
  }
#endif
  load_tile<R>(z, n, C, t);
}

template <int R, int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void store_rows(const acc_t* t, int64_t n, int64_t C, scalar_t* out) {
#if FASTSMALL_X86
  if constexpr (BYTES >= 32 && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (n == R) return store_tile_avx2<R>(t, C, out);
  }
#endif
  store_tile<R>(t, n, C, out);
}

// ---- scratch -------------------------------------------------------------------------------------

// A 64-byte aligned heap buffer (std::vector would drop the vector types' alignment attribute).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // bytes == 0: no buffer.
  explicit AlignedBuffer(size_t bytes) {
    if (bytes == 0) return;
    const size_t rounded = (bytes + 63) / 64 * 64;
    p_ = std::aligned_alloc(64, rounded);
    TORCH_CHECK(p_ != nullptr, "fastsmall: out of memory for ", rounded, " bytes of scratch");
  }
  ~AlignedBuffer() { std::free(p_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  template <typename T>
  FASTSMALL_INLINE T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

}  // namespace fastsmall
