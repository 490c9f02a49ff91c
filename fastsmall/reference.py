"""Plain-PyTorch references for every fastsmall op.

These define what the ops compute: tests compare every backend with them and
benchmarks use them as the eager and ``torch.compile`` baselines. They are
differentiable through ordinary autograd. float16/bfloat16 inputs are computed
in float32 and returned in their own dtype, as the kernels do.
"""
from __future__ import annotations

import torch

from .skeleton import Skeleton, device_table, part_table

__all__ = ["kcs_forward", "bone_decompose", "kcs_inverse", "part_kcs_gram"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def kcs_forward(x: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Bone vectors ``x[parent] - x[child]``: ``[..., J, D] -> [..., J-1, D]``."""
    xo = _opmath(x)
    parent = device_table(skeleton.parents, "bone_parent", x.device, torch.int64)
    child = device_table(skeleton.parents, "bone_child", x.device, torch.int64)
    return (xo.index_select(-2, parent) - xo.index_select(-2, child)).to(x.dtype)


def bone_decompose(x: torch.Tensor, skeleton: Skeleton, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit bone directions and bone lengths: ``([..., J-1, D], [..., J-1, 1])``.

    ``eps == 0`` divides by the length as PoseAug does (a zero-length bone gives
    inf/NaN); ``eps > 0`` divides by ``max(length, eps)``.
    """
    xo = _opmath(x)
    bones = kcs_forward(xo, skeleton)
    length = torch.linalg.vector_norm(bones, dim=-1, keepdim=True)
    unit = bones / (length.clamp_min(eps) if eps > 0 else length)
    return unit.to(x.dtype), length.to(x.dtype)


def kcs_inverse(bones: torch.Tensor, skeleton: Skeleton, root: torch.Tensor | None = None) -> torch.Tensor:
    """Joint positions from bones: ``x[j] = root - sum of the bones on the path root -> j``.

    Without ``root`` the root joint is at zero, so ``kcs_inverse(kcs_forward(x)) == x - x[root]``.
    """
    bo = _opmath(bones)
    path = device_table(skeleton.parents, "path_matrix", bones.device, bo.dtype)  # [J, NB]
    x = -torch.matmul(path, bo)
    if root is not None:
        x = x + _opmath(root)
    return x.to(bones.dtype)


def part_kcs_gram(bones: torch.Tensor, skeleton: Skeleton, layout: str = "masked") -> torch.Tensor:
    """Part-aware KCS Gram matrices of bone vectors ``[..., NB, D]``.

    For part p with bone mask m_p: ``G_p = (u * m_p)(u * m_p)^T``, as PoseAug's
    ``kcs_layer_*`` compute it. ``layout="masked"``: ``[..., P, NB*NB]`` (each G_p
    flattened row-major, parts in skeleton order); ``"compact"``: only each part's
    ``n_p x n_p`` block (rows and columns in the part's bone order), concatenated
    ``[..., sum n_p^2]``.
    """
    bo = _opmath(bones)
    NB, parts = bones.shape[-2], skeleton.part_bones
    masks = part_table(parts, NB, False, "masks", bones.device, bo.dtype)  # [P, NB]
    masked = bo.unsqueeze(-3) * masks.unsqueeze(-1)  # [..., P, NB, D]
    gram = torch.matmul(masked, masked.transpose(-1, -2)).flatten(-2)  # [..., P, NB*NB]
    if layout == "compact":
        positions = part_table(parts, NB, True, "compact_positions", bones.device, torch.int64)
        gram = gram.flatten(-2).index_select(-1, positions)
    return gram.to(bones.dtype)
# ==== KE re-initialisation and DSD masking ==============================================
# References of fastsmall.ops.ke_reinit_ and fastsmall.ops.masked_mul_: the same
# counter-based RNG and float32 math as the kernels (fastsmall/masks.py has the
# definitions), written with int64 tensor ops masked to 32 bits, so every
# backend gives the same bits. They materialise full-size temporaries (mask,
# hashes, draws): fine for a reference, which is what the kernels avoid.

import math  # noqa: E402

from . import masks as _km  # noqa: E402

__all__ += ["ke_uniform_bits", "ke_keep_mask", "ke_draws", "ke_reinit_", "masked_mul_", "official_ke_reinit_",
            "official_masked_mul_"]


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) without int64 overflow (c split into 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _km.M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _km.MIX_M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _km.MIX_M2)
    return x ^ (x >> 16)


def ke_uniform_bits(numel: int, key: tuple[int, int], device=None) -> torch.Tensor:
    """The 23-bit draws ``k = mix32(mix32(lo32(e) ^ k0) ^ (k1 + hi32(e))) >> 9``, e = 0..numel-1 (int64)."""
    e = torch.arange(numel, dtype=torch.int64, device=device)
    h = _mix32((e & _km.M32) ^ key[0])
    h = _mix32(h ^ ((key[1] + (e >> 32)) & _km.M32))
    return h >> 9


def _f32(name: str, device) -> torch.Tensor:
    return torch.tensor(_km.F32[name], dtype=torch.float32, device=device)


def _uniform01(k: torch.Tensor) -> torch.Tensor:
    """(2k + 1) / 2^24 as float32 (exact)."""
    return (2 * k + 1).to(torch.float32) * 2.0 ** -24


# torch's float32 sqrt (and possibly division) on CPU may use vectorised math
# libraries that are not correctly rounded; computed in float64 and rounded once,
# float32 sqrt and division are correctly rounded (53 >= 2 * 24 + 2 bits).
def _div_rn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() / b.double()).float()


def _sqrt_rn(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(a.double()).float()


def _ke_log(u: torch.Tensor) -> torch.Tensor:
    """Natural log of u in (0, 1), float32, in the kernels' exact sequence of operations."""
    c = lambda name: _f32(name, u.device)  # noqa: E731
    bits = u.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > c("SQRT2")
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    f = m - 1.0
    s = _div_rn(f, f + 2.0)
    z = s * s
    w = z * (c("L3") + z * (c("L5") + z * (c("L7") + z * c("L9"))))
    lnm = (s + s * w) * 2.0
    return e.to(torch.float32) * c("LN2") + lnm


def _ke_cos2pi(u: torch.Tensor) -> torch.Tensor:
    """cos(2 pi u) for u in (0, 1) on the 2^-24 grid, float32, in the kernels' sequence of operations."""
    c = lambda name: _f32(name, u.device)  # noqa: E731
    a = (u - 0.5).abs()
    flip = a > 0.25
    a = torch.where(flip, 0.5 - a, a)
    use_sin = a > 0.125
    b = torch.where(use_sin, 0.25 - a, a)
    y = b * c("TWO_PI")
    y2 = y * y
    cos_p = 1.0 + y2 * (c("C2") + y2 * (c("C4") + y2 * (c("C6") + y2 * c("C8"))))
    sin_p = y + y * (y2 * (c("S3") + y2 * (c("S5") + y2 * (c("S7") + y2 * c("S9")))))
    v = torch.where(use_sin, sin_p, cos_p)
    return torch.where(flip, v, -v)


def ke_draws(shape, init: str, seed: int, generation: int, index: int, dtype: torch.dtype = torch.float32,
             device=None) -> torch.Tensor:
    """The full tensor R of re-initialisation values of tensor ``index`` (what ke_reinit_ writes where not kept)."""
    shape = tuple(shape)
    numel = math.prod(shape)
    if init == "zero" or numel == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = _km.init_scale(init, shape, dtype)
    a0, a1, b0, b1 = _km.reinit_keys(seed, generation, index)
    ka = ke_uniform_bits(numel, (a0, a1), device)
    if init == "torch_default":
        s = (2 * ka + 1 - 2 ** 23).to(acc)  # odd integers in (-2^23, 2^23), exact
        r = s * torch.tensor(scale, dtype=acc, device=device)
    else:
        u1 = _uniform01(ka)
        u2 = _uniform01(ke_uniform_bits(numel, (b0, b1), device))
        z = _sqrt_rn(-2.0 * _ke_log(u1)) * _ke_cos2pi(u2)
        r = z.to(acc) * torch.tensor(scale, dtype=acc, device=device)
    return r.to(dtype).reshape(shape)


def ke_keep_mask(shape, mask, device=None) -> torch.Tensor:
    """The bool keep-mask of a mask kind (bool tensor, KELS or WELS) for a tensor of ``shape``."""
    shape = tuple(shape)
    if isinstance(mask, torch.Tensor):
        return mask.to(device=device, dtype=torch.bool).reshape(shape)
    numel = math.prod(shape)
    if isinstance(mask, _km.WELS):
        keep = ke_uniform_bits(numel, _km.wels_key(mask.seed), device) < _km.wels_threshold(mask.rate)
        return keep.reshape(shape)
    rows = shape[0]
    cols = shape[1] if len(shape) >= 2 else 1
    k_in = cols if mask.k_in is None else mask.k_in
    keep = torch.zeros((rows, cols) + shape[2:], dtype=torch.bool, device=device)
    keep[:mask.k_out, :k_in] = True
    return keep.reshape(shape)


def ke_reinit_(tensors, masks, seed: int, generation: int = 0, init: str = "torch_default") -> None:
    """In place: ``W_i = where(keep_i, W_i, R_i)`` with ``R_i = ke_draws(W_i.shape, init, seed, generation, i)``.

    The official KE reset (a fresh random tensor and ``torch.where`` per tensor),
    with the counter-based draws instead of torch's generator.
    """
    with torch.no_grad():
        for i, (w, m) in enumerate(zip(tensors, masks)):
            keep = ke_keep_mask(w.shape, m, w.device)
            r = ke_draws(w.shape, init, seed, generation, i, w.dtype, w.device)
            w.copy_(torch.where(keep, w, r))


def masked_mul_(tensors, masks) -> None:
    """In place: ``W_i *= keep_i`` (DSD's sparse phase: pruned weights become ``W * 0``)."""
    with torch.no_grad():
        for w, m in zip(tensors, masks):
            w.mul_(ke_keep_mask(w.shape, m, w.device))


def official_ke_reinit_(tensors, keep_masks) -> None:
    """The official KE code's reset, the benchmarks' baseline (not bit-compatible with ke_reinit_).

    Per tensor: a fresh ``kaiming_uniform_(a=sqrt(5))`` tensor from torch's generator and
    ``W.data = torch.where(mask, W, R)`` with a stored bool mask -- two full-size
    temporaries per tensor and one kernel launch per step per tensor.
    """
    with torch.no_grad():
        for w, keep in zip(tensors, keep_masks):
            r = torch.zeros_like(w)
            torch.nn.init.kaiming_uniform_(r, a=math.sqrt(5))
            w.data = torch.where(keep, w, r)


def official_masked_mul_(tensors, keep_masks) -> None:
    """DSD's sparse-phase step as usually written, the benchmarks' baseline: ``W.mul_(mask)`` per tensor."""
    with torch.no_grad():
        for w, keep in zip(tensors, keep_masks):
            w.mul_(keep)
# ==== end KE re-initialisation and DSD masking ===========================================



# ==== distribution alignment (CReST / FixMatch pseudo-labels) ===============================
# Ops in fastsmall/ops/distribution_align.py.

__all__ += ["distribution_align", "softmax_batch_mean", "masked_cross_entropy", "distribution_align_target",
            "DistAlignWindowReference", "DistAlignEMAReference"]

DIST_ALIGN_EPS = 1e-6  # CReST's and USB's constant in (target + eps) / (running + eps)


def distribution_align_target(prior: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CReST's target distribution ``prior^t / sum(prior^t)`` (in the precision of ``prior``, float32 at least)."""
    p = _opmath(prior) ** temperature
    return p / p.sum()


def distribution_align(logits: torch.Tensor, prior: torch.Tensor, running: torch.Tensor, temperature: float = 1.0,
                       threshold: float = 0.95, eps: float = DIST_ALIGN_EPS, return_probs: bool = True):
    """FixMatch/CReST+ pseudo-labels from weak-view logits ``[B, C]``, written as CReST's official code.

    ``probs = softmax(z)``; ``aligned = probs * (target + eps) / (running + eps)``, renormalised per row,
    with ``target = prior^t / sum(prior^t)`` (google-research/crest ``pseudo_target_fn``; USB's
    ``DistAlignEMAHook.dist_align`` is the same formula). Returns ``(aligned or None, argmax aligned
    [B] int64, max aligned >= threshold [B] bool, mean over rows of probs [C])``; the batch mean of
    an empty batch is zeros. Computed in float32 for float16/bfloat16 logits (and in float64 for
    float64); ``aligned`` is returned in the logits' dtype, the batch mean in the compute dtype.
    No gradient flows through any output.
    """
    z = _opmath(logits.detach())
    probs = torch.softmax(z, dim=-1)
    target = distribution_align_target(prior.detach().to(z.dtype), temperature)
    aligned = probs * (target + eps) / (running.detach().to(z.dtype) + eps)
    aligned = aligned / aligned.sum(dim=-1, keepdim=True)
    label = torch.argmax(aligned, dim=-1)  # the first maximal index on ties
    mask = aligned.amax(dim=-1) >= threshold
    batch_mean = probs.sum(dim=0) / max(z.shape[0], 1)
    return (aligned.to(logits.dtype) if return_probs else None), label, mask, batch_mean


def softmax_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``softmax(logits)`` ``[C]`` (zeros for an empty batch), in the compute dtype."""
    z = _opmath(logits.detach())
    return torch.softmax(z, dim=-1).sum(dim=0) / max(z.shape[0], 1)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabelled loss ``sum_i mask_i * CE(z_i, y_i) / B`` (0 for an empty batch).

    The mean is over the whole batch, masked rows included (USB's ``(ce * mask).mean()``,
    CReST's ``unsup_loss_divisor='full'``). A row with mask 0 contributes exactly 0 and gets a
    zero gradient even when its logits are not finite (a select, not a product). ``mask`` is bool
    or floating (weights); it receives no gradient.
    """
    z = _opmath(logits)
    w = mask.detach().to(z.dtype)
    keep = w != 0
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    # masked-out rows are replaced before the CE, so non-finite logits there cannot leak NaN into
    # the gradient (where() alone would give 0 * NaN)
    ce = torch.nn.functional.cross_entropy(torch.where(keep[:, None], z, zero), target, reduction="none")
    loss = torch.where(keep, ce * w, zero).sum() / max(z.shape[0], 1)
    return loss.to(logits.dtype)


class DistAlignWindowReference:
    """CReST's official running distribution (google-research/crest ``PMovingAverage``, from ReMixMatch).

    A buffer of the last ``window`` batch means, initialised to the uniform distribution;
    ``p_model = mean(buffer) / sum(mean(buffer))`` aligns a batch, *then* the batch's raw-softmax
    mean replaces the oldest entry (``update`` after the training step).
    """

    def __init__(self, num_classes: int, window: int = 128, dtype=torch.float32):
        self.ma = torch.ones(window, num_classes, dtype=dtype) / num_classes

    def p_model(self) -> torch.Tensor:
        v = self.ma.mean(dim=0)
        return v / v.sum()

    def __call__(self, logits, prior, temperature=1.0, threshold=0.95, eps=DIST_ALIGN_EPS):
        out = distribution_align(logits, prior, self.p_model(), temperature, threshold, eps)
        if logits.shape[0]:
            entry = torch.softmax(_opmath(logits.detach()), dim=-1).mean(dim=0).to(self.ma.dtype)
            self.ma = torch.cat([self.ma[1:], entry[None]], dim=0)
        return out


class DistAlignEMAReference:
    """USB's running distribution (``semilearn DistAlignEMAHook.update_p``, momentum 0.999).

    *Before* aligning a batch: ``p_model = batch mean`` on the first call (``p_model is None``),
    else ``p_model = m * p_model + (1 - m) * batch mean``; then the batch is aligned with it.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, dtype=torch.float32):
        self.m = momentum
        self.p_model = None
        self.dtype = dtype

    def __call__(self, logits, prior, temperature=1.0, threshold=0.95, eps=DIST_ALIGN_EPS):
        if logits.shape[0]:
            mean = torch.softmax(_opmath(logits.detach()), dim=-1).mean(dim=0).to(self.dtype)
            self.p_model = mean if self.p_model is None else self.p_model * self.m + mean * (1 - self.m)
        return distribution_align(logits, prior, self.p_model, temperature, threshold, eps)
