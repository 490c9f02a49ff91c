// The block kernels of the distribution-alignment op family (distribution_align_cpu.cpp): one
// block of rows of logits [B, C] per call, written once on the vector types of simd.h and
// compiled per instruction set through isa.h.
//
// For C <= kTileMaxC rows go through in tiles of R = 32 rows held transposed ([C][R], compute
// precision): every vector holds one class of several rows, so the code vectorises whatever C is
// (a row of C = 10 classes would not fill one vector) and the row statistics (max, sums, argmax)
// are lane-wise. For larger C, one row at a time with vectors along the row (row, exp and
// partial sums stay in L1). A tile or row is read from memory once; all passes over it (max,
// exp + sum, align + sum, normalise + argmax) run in cache.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../macros.h"
#include "simd.h"

namespace fastsmall {
namespace distribution_align {

// ---- row blocks and tiles ----------------------------------------------------------------------

constexpr int64_t kRowAlign = 32;         // blocks are whole tiles (R divides 32)
constexpr int64_t kBlockElems = 1 << 15;  // ~ at::internal::GRAIN_SIZE scalars per block
constexpr int64_t kMaxBlocks = 1024;      // bounds the partial sums to 1024 x C

// Rows per block: a function of B and C only, so block partials (and their sum) are reproducible.
inline int64_t rows_per_block(int64_t B, int64_t C) {
  const int64_t rows = std::max<int64_t>(kBlockElems / C, (B + kMaxBlocks - 1) / kMaxBlocks);
  return std::max<int64_t>(kRowAlign, (rows + kRowAlign - 1) / kRowAlign * kRowAlign);
}

// C <= kTileMaxC: tiles of 32 rows, transposed (vectors across rows). Larger C: one row at a time,
// vectors along the row (a row, its exp and the batch-mean partials stay in L1, where a
// transposed tile of several rows would not).
constexpr int64_t kTileMaxC = 128;
constexpr int64_t kMaxLanes = 16;  // the widest vector (AVX-512 float32)

inline int64_t padded_classes(int64_t C) { return (C + kMaxLanes - 1) / kMaxLanes * kMaxLanes; }

// Per-thread scratch: t (a tile [C][R], or a padded row) and bm (batch-mean partials of the same
// size, for the align kernels only).
struct Scratch {
  AlignedBuffer t, bm;
  Scratch(int64_t elems, size_t elem_bytes, bool with_bm)
      : t(static_cast<size_t>(elems) * elem_bytes), bm(with_bm ? static_cast<size_t>(elems) * elem_bytes : 0) {}
};

// Scratch elements for tile rows R (0: one padded row).
inline int64_t scratch_elems(int64_t C, int64_t R) { return R > 0 ? C * R : padded_classes(C); }

// ---- tiles of R rows ---------------------------------------------------------------------------

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

// so <- sum over classes j != y of the tile's exp values (y per row in yv; -1 matches no class).
template <int NV, typename V>
FASTSMALL_INLINE void other_sums(const V* __restrict__ t, int64_t C, const V* yv, V* so) {
  for (int v = 0; v < NV; ++v) so[v] = V{};
  for (int64_t j = 0; j < C; ++j) {
    const V jj = splat<V>(static_cast<lane_t<V>>(j));
    for (int v = 0; v < NV; ++v) so[v] += yv[v] == jj ? V{} : t[j * NV + v];
  }
}

// Vectors of the row weights of a tile: mask values as 0/1 (bool) or weights (floating); 0 for
// padding rows.
template <typename acc_t>
struct MaskView {
  const uint8_t* b = nullptr;  // bool bytes: any nonzero byte is True (weight 1), as torch reads bool
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
      for (int r = 0; r < R; ++r) ws[r] = mask.b[i0 + r] != 0 ? acc_t(1) : acc_t(0);
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
      ws[r] = r < n ? (mask.b != nullptr ? (mask.b[i0 + r] != 0 ? acc_t(1) : acc_t(0)) : mask.w[i0 + r]) : acc_t(0);
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
  V* __restrict__ t = scratch.t.as<V>();
  V* __restrict__ bm = scratch.bm.as<V>();
  acc_t* ts = scratch.t.as<acc_t>();
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
  V* __restrict__ t = scratch.t.as<V>();
  acc_t* ts = scratch.t.as<acc_t>();
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
    V so[NV];  // sum over j != y of exp(z_j - m)
    other_sums<NV>(t, C, yv, so);
    // CE = log sum exp z - z_y = log(s) + m - z_y, or log1p(so) where z_y is the row max (s = 1 +
    // so there, and 1 + so would round away most of a small loss: a confident row's CE has full
    // relative precision this way). Rows with zero weight are cleared with a bitwise and
    // (NaN-proof), as in ce_backward_block.
    using I = decltype(w[0] != w[0]);
    for (int v = 0; v < NV; ++v) {
      const I keep = w[v] != acc_t(0);
      const V ce = zy[v] == m[v] ? log1p_nonneg(so[v]) : log_pos(s[v]) + m[v] - zy[v];
      sum[v] += bit_cast_vec<V>(bit_cast_vec<I>(w[v] * ce) & keep);
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
  V* __restrict__ t = scratch.t.as<V>();
  acc_t* ts = scratch.t.as<acc_t>();
  bool any_bad = false;
  for (int64_t i0 = row0; i0 < row1; i0 += R) {
    const int64_t n = std::min<int64_t>(R, row1 - i0);
    load_rows<R, BYTES>(z + i0 * C, n, C, ts);
    V m[NV], s[NV], coef[NV], w[NV], yv[NV];
    load_rows_info<R>(mask, y, i0, n, C, w, yv, any_bad);
    exp_tile<NV>(t, C, m, s);
    // keep: all-ones lanes where w != 0; rows with w == 0 are cleared with a bitwise and, which
    // also clears NaN (a select on this loop-invariant mask would be scalarised by GCC).
    using I = decltype(w[0] != w[0]);
    I keep[NV];
    V so[NV];
    other_sums<NV>(t, C, yv, so);
    for (int v = 0; v < NV; ++v) {
      keep[v] = w[v] != acc_t(0);
      coef[v] = scale * w[v] / s[v];
    }
    // softmax_y - 1 = -so / s, not p_y - 1: for a confident row p_y rounds to 1 and the target's
    // gradient would vanish.
    for (int64_t j = 0; j < C; ++j) {
      const V jj = splat<V>(static_cast<acc_t>(j));
      for (int v = 0; v < NV; ++v) {
        const V g = (yv[v] == jj ? -so[v] : t[j * NV + v]) * coef[v];
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
  V* __restrict__ x = scratch.t.as<V>();
  V* __restrict__ bm = scratch.bm.as<V>();
  const acc_t* xs = scratch.t.as<const acc_t>();
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
  const acc_t* bms = scratch.bm.as<const acc_t>();
  for (int64_t j = 0; j < C; ++j) part[j] = bms[j];
}

// Sum over j != y of a row's exp values x (a plain loop: the large-C path is not the hot one).
template <typename V>
FASTSMALL_INLINE lane_t<V> other_sum(const V* __restrict__ x, int64_t C, int64_t y) {
  const lane_t<V>* xs = reinterpret_cast<const lane_t<V>*>(x);
  lane_t<V> so = 0;
  for (int64_t j = 0; j < C; ++j) so += j == y ? lane_t<V>(0) : xs[j];
  return so;
}

template <int BYTES, typename scalar_t, typename acc_t>
FASTSMALL_INLINE void ce_rows(const scalar_t* __restrict__ z, const int64_t* __restrict__ y, MaskView<acc_t> mask,
                              int64_t row0, int64_t row1, int64_t C, Scratch& scratch, acc_t* __restrict__ part,
                              bool* bad) {
  using V = typename Simd<acc_t, BYTES>::V;
  constexpr int W = Simd<acc_t, BYTES>::W;
  const int64_t NC = (C + W - 1) / W;
  V* __restrict__ x = scratch.t.as<V>();
  acc_t sum = 0;
  bool any_bad = false;
  for (int64_t i = row0; i < row1; ++i) {
    const int64_t yi = y[i];
    if (static_cast<uint64_t>(yi) >= static_cast<uint64_t>(C)) {
      any_bad = true;
      continue;
    }
    const acc_t w = mask.b != nullptr ? (mask.b[i] != 0 ? acc_t(1) : acc_t(0)) : mask.w[i];
    if (w == acc_t(0)) continue;  // exactly 0, whatever the logits
    acc_t m, s;
    exp_row<W>(z + i * C, C, NC, x, m, s);
    const acc_t zy = static_cast<acc_t>(z[i * C + yi]);
    // as in ce_block: log1p of the other classes' sum where z_y is the max (full relative precision)
    sum += w * (zy == m ? std::log1p(other_sum(x, C, yi)) : std::log(s) + m - zy);
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
  V* __restrict__ x = scratch.t.as<V>();
  acc_t* xs = scratch.t.as<acc_t>();
  bool any_bad = false;
  for (int64_t i = row0; i < row1; ++i) {
    scalar_t* gi = gz + i * C;
    const int64_t yi = y[i];
    const bool ok = static_cast<uint64_t>(yi) < static_cast<uint64_t>(C);
    any_bad |= !ok;
    const acc_t w = mask.b != nullptr ? (mask.b[i] != 0 ? acc_t(1) : acc_t(0)) : mask.w[i];
    if (!ok || w == acc_t(0)) {  // exact zeros
      for (int64_t j = 0; j < C; ++j) gi[j] = scalar_t(0);
      continue;
    }
    acc_t m, s;
    exp_row<W>(z + i * C, C, NC, x, m, s);
    const acc_t coef = scale * w / s;
    const acc_t so = other_sum(x, C, yi);
    for (int64_t v = 0; v < NC; ++v) x[v] = x[v] * coef;
    xs[yi] = -so * coef;  // softmax_y - 1 = -so / s (p_y - 1 would vanish for a confident row)
    for (int64_t j = 0; j < C; ++j) gi[j] = static_cast<scalar_t>(xs[j]);
  }
  *bad = any_bad;
}

}  // namespace distribution_align
}  // namespace fastsmall
