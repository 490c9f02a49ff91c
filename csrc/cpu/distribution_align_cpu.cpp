// CPU kernels of the distribution-alignment op family (FixMatch / CReST+ pseudo-labels):
// distribution_align, softmax_batch_mean, masked_cross_entropy and its backward.
// Schemas: csrc/fastsmall.cpp. Reference: fastsmall/reference.py (distribution-alignment section).
//
// Layout: logits [B, C] (made contiguous) are cut into row blocks whose size depends on B and C
// only, never on the thread count; blocks are the iterations of an OpenMP-parallel loop
// (at::parallel_for). Sums over rows (the batch mean of the softmax, the loss) are accumulated
// per block and the block partials are added in block order afterwards, so every result is
// bitwise the same for any number of threads.
//
// Inside a block, for C <= 128 rows go through in tiles of 32 rows held transposed ([C][32],
// compute precision): every vector holds one class of several rows, so the code vectorises
// whatever C is (a row of C = 10 classes would not fill one vector) and the row statistics
// (max, sums, argmax) are lane-wise. For larger C, one row at a time with vectors along the row
// (row, exp and partial sums stay in L1). A tile or row is read from memory once; all passes
// over it (max, exp + sum, align + sum, normalise + argmax) run in cache.
//
// float16/bfloat16 are computed in float32 (at::opmath_type), float64 in float64. The code is
// explicit SIMD on GCC/Clang vector types, instantiated for SSE2, AVX2+FMA and AVX-512 and chosen
// at run time (__builtin_cpu_supports); the float32 exp and log are branch-free Cephes
// polynomials (~1 ulp), float64 uses std::exp / std::log per lane.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

// The vector helpers take and return vector types by value; they are always inlined, so GCC's
// note that such calls would have a different ABI without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastsmall {
namespace {

// ---- argument checks (errors name the argument, as the Python wrappers do) -------------

void check_logits(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastsmall: ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 2, "fastsmall: ", name, " must have shape [B, C], got ", t.sizes());
  TORCH_CHECK(t.size(1) >= 1, "fastsmall: ", name, " must have at least one class (C >= 1), got shape ",
              t.sizes());
  // class indices are carried in the compute type inside the kernels: exact below 2^24
  TORCH_CHECK(t.size(1) <= (int64_t(1) << 24), "fastsmall: ", name, " has ", t.size(1),
              " classes; the CPU kernels take at most 2^24");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fastsmall: ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

void check_class_vector(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastsmall: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(1), "fastsmall: ", name,
              " must have shape [C] = [", logits.size(1), "] (one entry per class of logits), got ", t.sizes());
  check_same_device(t, name, logits, "logits");
}

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& logits) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "fastsmall: ", name, " must have shape [B] = [",
              logits.size(0), "] (one entry per row of logits), got ", t.sizes());
  check_same_device(t, name, logits, "logits");
}

void check_target_and_mask(const at::Tensor& target, const at::Tensor& mask, const at::Tensor& logits) {
  TORCH_CHECK(target.scalar_type() == at::kLong, "fastsmall: target must be an int64 tensor of class indices, got ",
              target.scalar_type());
  check_rows(target, "target", logits);
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()),
              "fastsmall: mask must be a bool or floating-point tensor, got ", mask.scalar_type());
  check_rows(mask, "mask", logits);
}

void check_scalars(double temperature, double threshold, double eps) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "fastsmall: temperature must be > 0, got ",
              temperature);
  TORCH_CHECK(threshold >= 0 && threshold <= 1, "fastsmall: threshold must be in [0, 1], got ", threshold);
  TORCH_CHECK(eps >= 0, "fastsmall: eps must be >= 0, got ", eps);
}

// Helpers are force-inlined, so the AVX2 instantiations below compile all of their code for AVX2.
#define FASTSMALL_INLINE inline __attribute__((always_inline))

// ---- SIMD types ------------------------------------------------------------------------------
// Tiles are computed on GCC/Clang vector types of BYTES bytes: explicit vector code, independent
// of the auto-vectoriser. Every block kernel is instantiated for three instruction sets, chosen
// at run time: the build's baseline (SSE2, 16-byte vectors), AVX2+FMA (32) and AVX-512 (64).
// Comparisons give integer vectors of the same width, and `c ? a : b` on them is a lane-wise
// blend. The alignment is spelled out because a baseline compile caps vector types at 16 bytes.

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

// ---- ISA dispatch ----------------------------------------------------------------------------
// The block kernels are force-inlined into one wrapper per instruction set (the _isa functions
// below), compiled with the matching target attribute. For float32 the AVX2 and AVX-512 ones
// also move full tiles in and out of their transposed layout with 8x8 register transposes.

#if defined(__x86_64__) || defined(__i386__)
#define FASTSMALL_DA_X86 1
#define FASTSMALL_AVX2 __attribute__((target("avx2,fma")))
#define FASTSMALL_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#else
#define FASTSMALL_DA_X86 0
#define FASTSMALL_AVX2
#define FASTSMALL_AVX512
#endif

// Vector bytes of the widest instruction set this CPU has: 64 (AVX-512), 32 (AVX2+FMA) or 16.
// FASTSMALL_SIMD_BYTES=16|32|64 caps it (tests use it to cover every instantiation).
int simd_bytes() {
  static const int bytes = [] {
    int best = 16;
#if FASTSMALL_DA_X86
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

#if FASTSMALL_DA_X86
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

// A full tile of R rows of z (row-major, C columns) -> t ([C][R]). Not inlined: its callers are
// compiled for the baseline ISA before they are inlined into the AVX2/AVX-512 wrappers.
template <int R>
FASTSMALL_AVX2 __attribute__((noinline)) void load_tile_avx2(const float* z, int64_t C, float* t) {
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

// t ([C][R]) -> a full tile of R rows of out (row-major, C columns).
template <int R>
FASTSMALL_AVX2 __attribute__((noinline)) void store_tile_avx2(const float* t, int64_t C, float* out) {
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
#endif

// ---- row blocks and tiles ----------------------------------------------------------------------

constexpr int64_t kRowAlign = 32;         // blocks are whole tiles (R divides 32)
constexpr int64_t kBlockElems = 1 << 15;  // ~ at::internal::GRAIN_SIZE scalars per block
constexpr int64_t kMaxBlocks = 1024;      // bounds the partial sums to 1024 x C

// Rows per block: a function of B and C only, so block partials (and their sum) are reproducible.
int64_t rows_per_block(int64_t B, int64_t C) {
  const int64_t rows = std::max<int64_t>(kBlockElems / C, (B + kMaxBlocks - 1) / kMaxBlocks);
  return std::max<int64_t>(kRowAlign, (rows + kRowAlign - 1) / kRowAlign * kRowAlign);
}

// C <= kTileMaxC: tiles of 32 rows, transposed (vectors across rows). Larger C: one row at a time,
// vectors along the row (a row, its exp and the batch-mean partials stay in L1, where a
// transposed tile of several rows would not).
constexpr int64_t kTileMaxC = 128;
constexpr int64_t kMaxLanes = 16;  // the widest vector (AVX-512 float32)

int64_t padded_classes(int64_t C) { return (C + kMaxLanes - 1) / kMaxLanes * kMaxLanes; }

// Per-thread scratch, 64-byte aligned (std::vector would drop the vector types' alignment
// attribute): t (a tile [C][R], or a padded row) and bm (batch-mean partials of the same size).
struct Scratch {
  void* t = nullptr;
  void* bm = nullptr;
  Scratch(int64_t elems, size_t elem_bytes, bool with_bm) {
    const size_t bytes = (static_cast<size_t>(elems) * elem_bytes + 63) / 64 * 64;
    t = std::aligned_alloc(64, bytes);
    bm = with_bm ? std::aligned_alloc(64, bytes) : nullptr;
    TORCH_CHECK(t != nullptr && (bm != nullptr || !with_bm), "fastsmall: out of memory for ", bytes,
                " bytes of scratch");
  }
  ~Scratch() {
    std::free(t);
    std::free(bm);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Scratch elements for tile rows R (0: one padded row).
int64_t scratch_elems(int64_t C, int64_t R) { return R > 0 ? C * R : padded_classes(C); }

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
#if FASTSMALL_DA_X86
  if constexpr (BYTES >= 32 && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (n == R) return load_tile_avx2<R>(z, C, t);
  }
#endif
  load_tile<R>(z, n, C, t);
}

template <int R, int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void store_rows(const acc_t* t, int64_t n, int64_t C, scalar_t* out) {
#if FASTSMALL_DA_X86
  if constexpr (BYTES >= 32 && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (n == R) return store_tile_avx2<R>(t, C, out);
  }
#endif
  store_tile<R>(t, n, C, out);
}

// Row maxima m and, in place, t <- exp(t - m) with row sums s (NV vectors of rows per class).
template <int NV, typename V>
FASTSMALL_INLINE void exp_tile(V* __restrict__ t, int64_t C, V* m, V* s) {
  for (int v = 0; v < NV; ++v) m[v] = t[v];
  for (int64_t j = 1; j < C; ++j)
    for (int v = 0; v < NV; ++v) m[v] = t[j * NV + v] > m[v] ? t[j * NV + v] : m[v];
  for (int v = 0; v < NV; ++v) s[v] = V{};
  for (int64_t j = 0; j < C; ++j)
    for (int v = 0; v < NV; ++v) {
      const V e = exp_nonpos(t[j * NV + v] - m[v]);
      t[j * NV + v] = e;
      s[v] += e;
    }
}

// Vectors of the row weights of a tile: mask values as 0/1 (bool) or weights (floating); 0 for
// padding rows.
template <typename acc_t>
struct MaskView {
  const bool* b = nullptr;
  const acc_t* w = nullptr;
};

// The row weights and targets of a tile as vectors: w (0/1 for bool masks, 0 for padding rows)
// and y as values of the compute type (exact, C < 2^24; -1 for out-of-range targets, which are
// reported through bad, and for padding rows).
template <int R, typename acc_t, typename V>
FASTSMALL_INLINE void load_rows_info(MaskView<acc_t> mask, const int64_t* __restrict__ y, int64_t i0, int64_t n,
                                     int64_t C, V* w, V* yv, bool& bad) {
  acc_t ws[R], ys[R];
  bool any_bad = false;
  if (n == R) {  // a full tile, without data-dependent branches (masks and targets are random)
    if (mask.b != nullptr) {
      for (int r = 0; r < R; ++r) ws[r] = static_cast<acc_t>(mask.b[i0 + r]);
    } else {
      for (int r = 0; r < R; ++r) ws[r] = mask.w[i0 + r];
    }
    for (int r = 0; r < R; ++r) {
      const int64_t yi = y[i0 + r];
      const bool ok = static_cast<uint64_t>(yi) < static_cast<uint64_t>(C);
      any_bad |= !ok;
      ys[r] = ok ? static_cast<acc_t>(yi) : acc_t(-1);
    }
  } else {
    for (int r = 0; r < R; ++r) {
      ws[r] = r < n ? (mask.b != nullptr ? static_cast<acc_t>(mask.b[i0 + r]) : mask.w[i0 + r]) : acc_t(0);
      const int64_t yi = r < n ? y[i0 + r] : -1;
      const bool ok = static_cast<uint64_t>(yi) < static_cast<uint64_t>(C);
      any_bad |= r < n && !ok;
      ys[r] = ok ? static_cast<acc_t>(yi) : acc_t(-1);
    }
  }
  bad |= any_bad;
  std::memcpy(w, ws, sizeof(ws));
  std::memcpy(yv, ys, sizeof(ys));
}

struct AlignOutputs {
  void* probs;  // scalar_t [B, C] or nullptr
  int64_t* label;
  bool* mask;
};

// One block of rows [row0, row1) of distribution_align (ALIGN) or softmax_batch_mean (!ALIGN):
// part[C] <- sum over the block's rows of softmax(z).
template <int R, int BYTES, bool ALIGN, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void align_block(const scalar_t* __restrict__ z, int64_t row0, int64_t row1, int64_t C,
                                  const acc_t* __restrict__ ratio, acc_t threshold, AlignOutputs out,
                                  Scratch& scratch, acc_t* __restrict__ part) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W, NV = R / W;
  V* __restrict__ t = static_cast<V*>(scratch.t);
  V* __restrict__ bm = static_cast<V*>(scratch.bm);
  acc_t* ts = static_cast<acc_t*>(scratch.t);
  std::fill(bm, bm + C * NV, V{});
  scalar_t* probs = static_cast<scalar_t*>(out.probs);
  for (int64_t i0 = row0; i0 < row1; i0 += R) {
    const int64_t n = std::min<int64_t>(R, row1 - i0);
    load_rows<R, BYTES>(z + i0 * C, n, C, ts);
    V m[NV], s[NV], inv_s[NV];
    exp_tile<NV>(t, C, m, s);
    for (int v = 0; v < NV; ++v) {
      V row;  // row index within the tile; padding rows (>= n) add nothing to the batch mean
      for (int l = 0; l < W; ++l) row[l] = static_cast<acc_t>(v * W + l);
      inv_s[v] = row < static_cast<acc_t>(n) ? acc_t(1) / s[v] : V{};
    }
    for (int64_t j = 0; j < C; ++j)
      for (int v = 0; v < NV; ++v) bm[j * NV + v] += t[j * NV + v] * inv_s[v];
    if constexpr (ALIGN) {
      // aligned = e * ratio / sum(e * ratio): CReST's p * (target + eps) / (running + eps),
      // renormalised (p's own normaliser 1/s cancels).
      V a[NV];
      for (int v = 0; v < NV; ++v) a[v] = V{};
      for (int64_t j = 0; j < C; ++j) {
        const V rj = splat<V>(ratio[j]);
        for (int v = 0; v < NV; ++v) {
          const V x = t[j * NV + v] * rj;
          t[j * NV + v] = x;
          a[v] += x;
        }
      }
      // Normalise and take the first maximal index (strictly greater replaces: ties keep the
      // smallest j, as torch.argmax). The index is carried as a value of the compute type
      // (exact, C < 2^24) so that the blends stay in one vector type.
      V inv_a[NV], best[NV], arg[NV];
      for (int v = 0; v < NV; ++v) {
        inv_a[v] = acc_t(1) / a[v];
        best[v] = splat<V>(-std::numeric_limits<acc_t>::infinity());
        arg[v] = V{};
      }
      for (int64_t j = 0; j < C; ++j) {
        const V jj = splat<V>(static_cast<acc_t>(j));
        for (int v = 0; v < NV; ++v) {
          const V p = t[j * NV + v] * inv_a[v];
          t[j * NV + v] = p;
          const auto greater = p > best[v];
          best[v] = greater ? p : best[v];
          arg[v] = greater ? jj : arg[v];
        }
      }
      acc_t best_s[R], arg_s[R];
      std::memcpy(best_s, best, sizeof(best_s));
      std::memcpy(arg_s, arg, sizeof(arg_s));
      for (int64_t r = 0; r < n; ++r) {
        out.label[i0 + r] = static_cast<int64_t>(arg_s[r]);
        out.mask[i0 + r] = best_s[r] >= threshold;
      }
      if (probs != nullptr) store_rows<R, BYTES>(ts, n, C, probs + i0 * C);
    }
  }
  // Column sums of the block, in a fixed order.
  for (int64_t j = 0; j < C; ++j) {
    acc_t sum = 0;
    for (int v = 0; v < NV; ++v)
      for (int l = 0; l < W; ++l) sum += bm[j * NV + v][l];
    part[j] = sum;
  }
}

// One block of masked_cross_entropy: part[0] <- sum over rows with mask != 0 of mask * CE.
// bad is set when a target is outside [0, C).
template <int R, int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void ce_block(const scalar_t* __restrict__ z, const int64_t* __restrict__ y, MaskView<acc_t> mask,
                               int64_t row0, int64_t row1, int64_t C, Scratch& scratch, acc_t* __restrict__ part,
                               bool* bad) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W, NV = R / W;
  V* __restrict__ t = static_cast<V*>(scratch.t);
  acc_t* ts = static_cast<acc_t*>(scratch.t);
  V sum[NV];
  for (int v = 0; v < NV; ++v) sum[v] = V{};
  bool any_bad = false;
  for (int64_t i0 = row0; i0 < row1; i0 += R) {
    const int64_t n = std::min<int64_t>(R, row1 - i0);
    load_rows<R, BYTES>(z + i0 * C, n, C, ts);
    V m[NV], s[NV], w[NV], yv[NV], zy[NV];
    load_rows_info<R>(mask, y, i0, n, C, w, yv, any_bad);
    // z[i, y_i], picked from the tile by a select per class before exp overwrites it.
    for (int v = 0; v < NV; ++v) zy[v] = V{};
    for (int64_t j = 0; j < C; ++j) {
      const V jj = splat<V>(static_cast<acc_t>(j));
      for (int v = 0; v < NV; ++v) zy[v] += yv[v] == jj ? t[j * NV + v] : V{};
    }
    exp_tile<NV>(t, C, m, s);
    // CE = log sum exp z - z_y = log(s) + m - z_y; rows with zero weight are cleared with a
    // bitwise and (NaN-proof), as in ce_backward_block.
    using I = decltype(w[0] != w[0]);
    for (int v = 0; v < NV; ++v) {
      const I keep = w[v] != acc_t(0);
      sum[v] += bit_cast_vec<V>(bit_cast_vec<I>(w[v] * (log_pos(s[v]) + m[v] - zy[v])) & keep);
    }
  }
  acc_t total = 0;
  for (int v = 0; v < NV; ++v)
    for (int l = 0; l < W; ++l) total += sum[v][l];
  part[0] = total;
  *bad = any_bad;
}

// One block of masked_cross_entropy_backward: grad_z = scale * w_i * (softmax(z_i) - onehot(y_i)),
// scale = grad / max(B, 1); rows with mask 0 get exact zeros.
template <int R, int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void ce_backward_block(const scalar_t* __restrict__ z, const int64_t* __restrict__ y,
                                        MaskView<acc_t> mask, acc_t scale, int64_t row0, int64_t row1, int64_t C,
                                        Scratch& scratch, scalar_t* __restrict__ gz, bool* bad) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int NV = R / Simd<acc_t, BYTES>::W;
  V* __restrict__ t = static_cast<V*>(scratch.t);
  acc_t* ts = static_cast<acc_t*>(scratch.t);
  bool any_bad = false;
  for (int64_t i0 = row0; i0 < row1; i0 += R) {
    const int64_t n = std::min<int64_t>(R, row1 - i0);
    load_rows<R, BYTES>(z + i0 * C, n, C, ts);
    V m[NV], s[NV], coef[NV], w[NV], yv[NV], onehot[NV];
    load_rows_info<R>(mask, y, i0, n, C, w, yv, any_bad);
    exp_tile<NV>(t, C, m, s);
    // keep: all-ones lanes where w != 0; rows with w == 0 are cleared with a bitwise and, which
    // also clears NaN (a select on this loop-invariant mask would be scalarised by GCC).
    using I = decltype(w[0] != w[0]);
    I keep[NV];
    for (int v = 0; v < NV; ++v) {
      keep[v] = w[v] != acc_t(0);
      coef[v] = scale * w[v] / s[v];
      onehot[v] = scale * w[v];
    }
    for (int64_t j = 0; j < C; ++j) {
      const V jj = splat<V>(static_cast<acc_t>(j));
      for (int v = 0; v < NV; ++v) {
        const V g = t[j * NV + v] * coef[v] - (yv[v] == jj ? onehot[v] : V{});
        t[j * NV + v] = bit_cast_vec<V>(bit_cast_vec<I>(g) & keep[v]);
      }
    }
    store_rows<R, BYTES>(ts, n, C, gz + i0 * C);
  }
  *bad = any_bad;
}

// ---- one row at a time (large C) ------------------------------------------------------------------
// The row is copied into x (compute type, padded with -inf to whole vectors: exp gives 0 there),
// then every pass runs over whole vectors in L1. Horizontal reductions go over lanes in a fixed
// order. `ratio` is padded with zeros to padded_classes(C).

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

// x <- row i of z (padded), returns the row max; then x <- exp(x - max), returns the row sum.
template <int W, typename scalar_t, typename acc_t, typename V>
FASTSMALL_INLINE void exp_row(const scalar_t* __restrict__ zi, int64_t C, int64_t NC, V* __restrict__ x,
                              acc_t& m, acc_t& s) {
  acc_t* xs = reinterpret_cast<acc_t*>(x);
  for (int64_t j = 0; j < C; ++j) xs[j] = static_cast<acc_t>(zi[j]);
  for (int64_t j = C; j < NC * W; ++j) xs[j] = -std::numeric_limits<acc_t>::infinity();
  // Four independent accumulators, so the loop-carried max / add latencies overlap.
  V mv[4] = {x[0], x[0], x[0], x[0]};
  int64_t v = 0;
  for (; v + 4 <= NC; v += 4)
    for (int u = 0; u < 4; ++u) mv[u] = x[v + u] > mv[u] ? x[v + u] : mv[u];
  for (; v < NC; ++v) mv[0] = x[v] > mv[0] ? x[v] : mv[0];
  for (int u = 1; u < 4; ++u) mv[0] = mv[u] > mv[0] ? mv[u] : mv[0];
  m = hmax(mv[0]);
  const V mm = splat<V>(m);
  V sv[4] = {V{}, V{}, V{}, V{}};
  for (v = 0; v + 4 <= NC; v += 4)
    for (int u = 0; u < 4; ++u) {
      const V e = exp_nonpos(x[v + u] - mm);
      x[v + u] = e;
      sv[u] += e;
    }
  for (; v < NC; ++v) {
    const V e = exp_nonpos(x[v] - mm);
    x[v] = e;
    sv[0] += e;
  }
  s = hsum((sv[0] + sv[1]) + (sv[2] + sv[3]));
}

template <int BYTES, bool ALIGN, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void align_rows(const scalar_t* __restrict__ z, int64_t row0, int64_t row1, int64_t C,
                                 const acc_t* __restrict__ ratio, acc_t threshold, AlignOutputs out,
                                 Scratch& scratch, acc_t* __restrict__ part) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W;
  const int64_t NC = (C + W - 1) / W;
  V* __restrict__ x = static_cast<V*>(scratch.t);
  V* __restrict__ bm = static_cast<V*>(scratch.bm);
  const acc_t* xs = static_cast<const acc_t*>(scratch.t);
  std::fill(bm, bm + NC, V{});
  scalar_t* probs = static_cast<scalar_t*>(out.probs);
  V iota;
  for (int l = 0; l < W; ++l) iota[l] = static_cast<acc_t>(l);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  for (int64_t i = row0; i < row1; ++i) {
    acc_t m, s;
    exp_row<W>(z + i * C, C, NC, x, m, s);
    const acc_t inv_s = acc_t(1) / s;
    for (int64_t v = 0; v < NC; ++v) bm[v] += x[v] * inv_s;
    if constexpr (ALIGN) {
      V av0 = V{}, av1 = V{};
      int64_t v = 0;
      for (; v + 2 <= NC; v += 2) {
        const V a0 = x[v] * load_vec<V>(ratio + v * W), a1 = x[v + 1] * load_vec<V>(ratio + (v + 1) * W);
        x[v] = a0;
        x[v + 1] = a1;
        av0 += a0;
        av1 += a1;
      }
      if (v < NC) {
        const V a0 = x[v] * load_vec<V>(ratio + v * W);
        x[v] = a0;
        av0 += a0;
      }
      const acc_t inv_a = acc_t(1) / hsum(av0 + av1);
      // Lane-wise first maximum (strictly greater), then the smallest index among the lanes
      // holding the maximum: the first maximal index overall, as torch.argmax.
      V best = splat<V>(-inf), arg = V{};
      const acc_t Cf = static_cast<acc_t>(C);
      for (int64_t v = 0; v < NC; ++v) {
        const V p = x[v] * inv_a;
        x[v] = p;
        const V jv = iota + static_cast<acc_t>(v * W);
        const V q = jv < Cf ? p : splat<V>(-inf);  // padding never wins
        const auto greater = q > best;
        best = greater ? q : best;
        arg = greater ? jv : arg;
      }
      const acc_t b = hmax(best);
      acc_t idx = Cf;
      for (int l = 0; l < W; ++l) idx = best[l] == b && arg[l] < idx ? arg[l] : idx;
      out.label[i] = idx < Cf ? static_cast<int64_t>(idx) : 0;  // a NaN row: 0, as torch.argmax
      out.mask[i] = b >= threshold;
      if (probs != nullptr) {
        scalar_t* pi = probs + i * C;
        for (int64_t j = 0; j < C; ++j) pi[j] = static_cast<scalar_t>(xs[j]);
      }
    }
  }
  const acc_t* bms = static_cast<const acc_t*>(scratch.bm);
  for (int64_t j = 0; j < C; ++j) part[j] = bms[j];
}

template <int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void ce_rows(const scalar_t* __restrict__ z, const int64_t* __restrict__ y, MaskView<acc_t> mask,
                              int64_t row0, int64_t row1, int64_t C, Scratch& scratch, acc_t* __restrict__ part,
                              bool* bad) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W;
  const int64_t NC = (C + W - 1) / W;
  V* __restrict__ x = static_cast<V*>(scratch.t);
  acc_t sum = 0;
  bool any_bad = false;
  for (int64_t i = row0; i < row1; ++i) {
    const int64_t yi = y[i];
    if (static_cast<uint64_t>(yi) >= static_cast<uint64_t>(C)) {
      any_bad = true;
      continue;
    }
    const acc_t w = mask.b != nullptr ? static_cast<acc_t>(mask.b[i]) : mask.w[i];
    if (w == acc_t(0)) continue;  // exactly 0, whatever the logits
    acc_t m, s;
    exp_row<W>(z + i * C, C, NC, x, m, s);
    sum += w * (std::log(s) + m - static_cast<acc_t>(z[i * C + yi]));
  }
  part[0] = sum;
  *bad = any_bad;
}

template <int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void ce_backward_rows(const scalar_t* __restrict__ z, const int64_t* __restrict__ y,
                                       MaskView<acc_t> mask, acc_t scale, int64_t row0, int64_t row1, int64_t C,
                                       Scratch& scratch, scalar_t* __restrict__ gz, bool* bad) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W;
  const int64_t NC = (C + W - 1) / W;
  V* __restrict__ x = static_cast<V*>(scratch.t);
  acc_t* xs = static_cast<acc_t*>(scratch.t);
  bool any_bad = false;
  for (int64_t i = row0; i < row1; ++i) {
    scalar_t* gi = gz + i * C;
    const int64_t yi = y[i];
    const bool ok = static_cast<uint64_t>(yi) < static_cast<uint64_t>(C);
    any_bad |= !ok;
    const acc_t w = mask.b != nullptr ? static_cast<acc_t>(mask.b[i]) : mask.w[i];
    if (!ok || w == acc_t(0)) {  // exact zeros
      for (int64_t j = 0; j < C; ++j) gi[j] = scalar_t(0);
      continue;
    }
    acc_t m, s;
    exp_row<W>(z + i * C, C, NC, x, m, s);
    const acc_t coef = scale * w / s;
    for (int64_t v = 0; v < NC; ++v) x[v] = x[v] * coef;
    xs[yi] -= scale * w;
    for (int64_t j = 0; j < C; ++j) gi[j] = static_cast<scalar_t>(xs[j]);
  }
  *bad = any_bad;
}

// The block kernels per instruction set: each is force-inlined into three wrappers (NAME_base,
// NAME_avx2, NAME_avx512) compiled with the matching target attribute.
#define FASTSMALL_DA_ISA_WRAPPERS(NAME, KERNEL)                \
  template <int R, typename... Args>                         \
  void NAME##_base(Args&&... args) {                         \
    KERNEL<R, 16>(std::forward<Args>(args)...);              \
  }                                                          \
  template <int R, typename... Args>                         \
  FASTSMALL_AVX2 void NAME##_avx2(Args&&... args) {          \
    KERNEL<R, 32>(std::forward<Args>(args)...);              \
  }                                                          \
  template <int R, typename... Args>                         \
  FASTSMALL_AVX512 void NAME##_avx512(Args&&... args) {      \
    KERNEL<R, 64>(std::forward<Args>(args)...);              \
  }

// R > 0: tiles of R rows; R == 0: one row at a time.
template <int R, int BYTES, typename... Args>
FASTSMALL_INLINE void align_kernel(Args&&... args) {
  if constexpr (R > 0) align_block<R, BYTES, true>(std::forward<Args>(args)...);
  else align_rows<BYTES, true>(std::forward<Args>(args)...);
}
template <int R, int BYTES, typename... Args>
FASTSMALL_INLINE void softmax_mean_kernel(Args&&... args) {
  if constexpr (R > 0) align_block<R, BYTES, false>(std::forward<Args>(args)...);
  else align_rows<BYTES, false>(std::forward<Args>(args)...);
}
template <int R, int BYTES, typename... Args>
FASTSMALL_INLINE void ce_kernel(Args&&... args) {
  if constexpr (R > 0) ce_block<R, BYTES>(std::forward<Args>(args)...);
  else ce_rows<BYTES>(std::forward<Args>(args)...);
}
template <int R, int BYTES, typename... Args>
FASTSMALL_INLINE void ce_backward_kernel(Args&&... args) {
  if constexpr (R > 0) ce_backward_block<R, BYTES>(std::forward<Args>(args)...);
  else ce_backward_rows<BYTES>(std::forward<Args>(args)...);
}

FASTSMALL_DA_ISA_WRAPPERS(align_isa, align_kernel)
FASTSMALL_DA_ISA_WRAPPERS(softmax_mean_isa, softmax_mean_kernel)
FASTSMALL_DA_ISA_WRAPPERS(ce_isa, ce_kernel)
FASTSMALL_DA_ISA_WRAPPERS(ce_backward_isa, ce_backward_kernel)

// Calls f(R, BYTES) with compile-time tile rows (0: row at a time) and vector bytes for this C and
// machine.
template <typename F>
void dispatch_tile(int64_t C, F&& f) {
  const int bytes = simd_bytes();
  auto with_rows = [&](auto rows) {
    if (bytes == 64) return f(rows, std::integral_constant<int, 64>{});
    if (bytes == 32) return f(rows, std::integral_constant<int, 32>{});
    return f(rows, std::integral_constant<int, 16>{});
  };
  if (C <= kTileMaxC) return with_rows(std::integral_constant<int, 32>{});
  return with_rows(std::integral_constant<int, 0>{});
}

// Calls the NAME##_base / _avx2 / _avx512 wrapper for BYTES.
#define FASTSMALL_DA_CALL(NAME, R, BYTES, ...)       \
  do {                                               \
    if constexpr ((BYTES) == 64)                     \
      NAME##_avx512<R>(__VA_ARGS__);                 \
    else if constexpr ((BYTES) == 32)                \
      NAME##_avx2<R>(__VA_ARGS__);                   \
    else                                             \
      NAME##_base<R>(__VA_ARGS__);                   \
  } while (0)

// ---- distribution_align / softmax_batch_mean ------------------------------------------------

// ratio[j] = (target_j + eps) / (running_j + eps), target = prior^t / sum(prior^t): once per call.
template <typename acc_t>
std::vector<acc_t> alignment_ratio(const at::Tensor& prior_, const at::Tensor& running_, double temperature,
                                   double eps) {
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor prior = prior_.detach().to(acc_type).contiguous();
  const at::Tensor running = running_.detach().to(acc_type).contiguous();
  const int64_t C = prior.numel();
  const acc_t* pp = prior.const_data_ptr<acc_t>();
  const acc_t* rp = running.const_data_ptr<acc_t>();
  const acc_t t = static_cast<acc_t>(temperature), e = static_cast<acc_t>(eps);
  std::vector<acc_t> ratio(padded_classes(C), acc_t(0));  // zeros past C, for whole-vector loads
  acc_t sum = 0;
  for (int64_t j = 0; j < C; ++j) {
    ratio[j] = std::pow(pp[j], t);
    sum += ratio[j];
  }
  for (int64_t j = 0; j < C; ++j) ratio[j] = (ratio[j] / sum + e) / (rp[j] + e);
  return ratio;
}

// Runs the ALIGN / !ALIGN pass over all blocks; returns the batch mean of the softmax [C].
template <bool ALIGN, typename scalar_t>
at::Tensor run_align(const at::Tensor& z, const std::vector<at::opmath_type<scalar_t>>& ratio, double threshold,
                     AlignOutputs out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = z.size(0), C = z.size(1);
  const int64_t rows = rows_per_block(B, C);
  const int64_t blocks = (B + rows - 1) / rows;
  std::vector<acc_t> partials(blocks * C);
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const acc_t* rp = ALIGN ? ratio.data() : nullptr;
  const acc_t thr = static_cast<acc_t>(threshold);
  dispatch_tile(C, [&](auto tile, auto simd) {
    constexpr int R = decltype(tile)::value, BYTES = decltype(simd)::value;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch(scratch_elems(C, R), sizeof(acc_t), true);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r0 = b * rows, r1 = std::min(B, (b + 1) * rows);
        acc_t* part = partials.data() + b * C;
        if constexpr (ALIGN)
          FASTSMALL_DA_CALL(align_isa, R, BYTES, zp, r0, r1, C, rp, thr, out, scratch, part);
        else
          FASTSMALL_DA_CALL(softmax_mean_isa, R, BYTES, zp, r0, r1, C, rp, thr, out, scratch, part);
      }
    });
  });
  at::Tensor mean = at::zeros({C}, z.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* mp = mean.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t j = 0; j < C; ++j) mp[j] += partials[b * C + j];
  const acc_t denom = static_cast<acc_t>(std::max<int64_t>(B, 1));
  for (int64_t j = 0; j < C; ++j) mp[j] /= denom;
  return mean;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distribution_align_cpu(
    const at::Tensor& logits_, const at::Tensor& prior, const at::Tensor& running, double temperature,
    double threshold, double eps, bool return_probs) {
  check_logits(logits_, "logits");
  check_class_vector(prior, "prior", logits_);
  check_class_vector(running, "running", logits_);
  check_scalars(temperature, threshold, eps);
  const at::Tensor z = logits_.detach().contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor probs = at::empty({B, return_probs ? C : 0}, z.options());
  at::Tensor label = at::empty({B}, z.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B}, z.options().dtype(at::kBool));
  at::Tensor mean;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "distribution_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> ratio = alignment_ratio<acc_t>(prior, running, temperature, eps);
    AlignOutputs out{return_probs ? probs.mutable_data_ptr<scalar_t>() : nullptr,
                     label.mutable_data_ptr<int64_t>(), mask.mutable_data_ptr<bool>()};
    mean = run_align<true, scalar_t>(z, ratio, threshold, out);
  });
  return {probs, label, mask, mean};
}

at::Tensor softmax_batch_mean_cpu(const at::Tensor& logits_) {
  check_logits(logits_, "logits");
  const at::Tensor z = logits_.detach().contiguous();
  at::Tensor mean;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "softmax_batch_mean_cpu", [&] {
    mean = run_align<false, scalar_t>(z, {}, 0.0, AlignOutputs{nullptr, nullptr, nullptr});
  });
  return mean;
}

// ---- masked_cross_entropy ---------------------------------------------------------------------

template <typename acc_t>
MaskView<acc_t> mask_view(const at::Tensor& mask, at::Tensor& converted) {
  MaskView<acc_t> view;
  if (mask.scalar_type() == at::kBool) {
    converted = mask.contiguous();
    view.b = converted.const_data_ptr<bool>();
  } else {
    converted = mask.detach().to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    view.w = converted.const_data_ptr<acc_t>();
  }
  return view;
}

void check_targets_in_range(const std::vector<char>& bad, int64_t C) {
  TORCH_CHECK(std::none_of(bad.begin(), bad.end(), [](char b) { return b != 0; }),
              "fastsmall: target has class indices outside [0, C) = [0, ", C, ")");
}

at::Tensor masked_cross_entropy_cpu(const at::Tensor& logits_, const at::Tensor& target_, const at::Tensor& mask_) {
  check_logits(logits_, "logits");
  check_target_and_mask(target_, mask_, logits_);
  const at::Tensor z = logits_.contiguous();
  const at::Tensor y = target_.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor loss = at::empty({}, z.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_cross_entropy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor mask_storage;
    const MaskView<acc_t> mask = mask_view<acc_t>(mask_, mask_storage);
    const int64_t rows = rows_per_block(B, C), blocks = (B + rows - 1) / rows;
    std::vector<acc_t> partials(blocks);
    std::vector<char> bad(blocks, 0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    dispatch_tile(C, [&](auto tile, auto simd) {
      constexpr int R = decltype(tile)::value, BYTES = decltype(simd)::value;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        Scratch scratch(scratch_elems(C, R), sizeof(acc_t), false);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t r0 = b * rows, r1 = std::min(B, (b + 1) * rows);
          bool blk_bad = false;
          FASTSMALL_DA_CALL(ce_isa, R, BYTES, zp, yp, mask, r0, r1, C, scratch, &partials[b], &blk_bad);
          bad[b] = blk_bad;
        }
      });
    });
    check_targets_in_range(bad, C);
    acc_t sum = 0;
    for (int64_t b = 0; b < blocks; ++b) sum += partials[b];
    loss.fill_(static_cast<double>(sum / static_cast<acc_t>(std::max<int64_t>(B, 1))));
  });
  return loss;
}

at::Tensor masked_cross_entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_,
                                             const at::Tensor& target_, const at::Tensor& mask_) {
  check_logits(logits_, "logits");
  check_target_and_mask(target_, mask_, logits_);
  TORCH_CHECK(grad.dim() == 0, "fastsmall: grad must be a scalar (0-dim) tensor, got shape ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "fastsmall: grad must be a floating-point tensor, got ",
              grad.scalar_type());
  check_same_device(grad, "grad", logits_, "logits");
  const at::Tensor z = logits_.contiguous();
  const at::Tensor y = target_.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor gz = at::empty({B, C}, z.options());
  const double g = grad.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_cross_entropy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor mask_storage;
    const MaskView<acc_t> mask = mask_view<acc_t>(mask_, mask_storage);
    const int64_t rows = rows_per_block(B, C), blocks = (B + rows - 1) / rows;
    std::vector<char> bad(blocks, 0);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    scalar_t* gp = gz.mutable_data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(g) / static_cast<acc_t>(std::max<int64_t>(B, 1));
    dispatch_tile(C, [&](auto tile, auto simd) {
      constexpr int R = decltype(tile)::value, BYTES = decltype(simd)::value;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        Scratch scratch(scratch_elems(C, R), sizeof(acc_t), false);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t r0 = b * rows, r1 = std::min(B, (b + 1) * rows);
          bool blk_bad = false;
          FASTSMALL_DA_CALL(ce_backward_isa, R, BYTES, zp, yp, mask, scale, r0, r1, C, scratch, gp, &blk_bad);
          bad[b] = blk_bad;
        }
      });
    });
    check_targets_in_range(bad, C);
  });
  return gz;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, CPU, m) {
  m.impl("distribution_align", &distribution_align_cpu);
  m.impl("softmax_batch_mean", &softmax_batch_mean_cpu);
  m.impl("masked_cross_entropy", &masked_cross_entropy_cpu);
  m.impl("masked_cross_entropy_backward", &masked_cross_entropy_backward_cpu);
}

}  // namespace fastsmall
