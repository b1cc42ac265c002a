"""Stateless quantization maths on grouped 2-D views ``x2d`` of shape (G, n): one set of params per row.

>>> s, z = scale_zero_point(lo, hi, qmin, qmax, symmetric=True)     # each (G, 1)
>>> y = fake_quant(x2d, s, z, qmin, qmax)                           # STE with clipping
"""

from __future__ import annotations

import torch

EPS = 1e-8


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _PassThrough(torch.autograd.Function):
    """Forward ``q``, backward identity to ``x`` (STE for non-uniform quantizers)."""

    @staticmethod
    def forward(ctx, x, q):
        return q.clone()

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``g`` (LSQ step-size gradient scale)."""

    @staticmethod
    def forward(ctx, x, g: float):
        ctx.g = g
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


class _FakeQuantSTE(torch.autograd.Function):
    """Uniform fake quant with fixed params; gradient 1 where the integer code is in range, else 0."""

    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        q = torch.round(x * (1.0 / scale)) + zp
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def pass_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _PassThrough.apply(x, q)


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return _GradScale.apply(x, g)


def qrange(bits: torch.Tensor | int, symmetric: bool, narrow: bool) -> tuple:
    """(qmin, qmax): symmetric [-2^(b-1)(+1 if narrow), 2^(b-1)-1], else [0, 2^b-1]; python floats for
    int bits (no device transfer), float tensors for a bits tensor."""
    if isinstance(bits, int):
        if symmetric:
            qmax = 2.0 ** (bits - 1) - 1
            return (-qmax if narrow else -qmax - 1), qmax
        return 0.0, 2.0 ** bits - 1
    b = torch.as_tensor(bits, dtype=torch.float32)
    if symmetric:
        qmax = 2.0 ** (b - 1) - 1
        return (-qmax if narrow else -(qmax + 1)), qmax
    return torch.zeros_like(b), 2.0 ** b - 1


def scale_zero_point(lo, hi, qmin, qmax, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and (integer-valued float) zero point mapping [lo, hi] onto [qmin, qmax]; each (G, 1)."""
    if symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(EPS)
        return scale, torch.zeros_like(scale)
    lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zp


def fake_quant(x, scale, zp, qmin, qmax) -> torch.Tensor:
    """``(clamp(round(x * (1/s)) + z, qmin, qmax) - z) * s`` on x (G, n) with params per row (G, 1) or
    per column (1, n), with clipped straight-through gradient to x. fp32 with python-number bounds runs
    torch's fused ``fake_quantize_per_channel_affine`` kernel (one pass forward and backward, the same
    numbers: it also multiplies by the reciprocal scale); other cases compose the same maths from ops.
    Half-precision x (bf16 autocast on GPU) with fp32 params takes the fused path on ``x.float()``: the
    composed ops would promote to fp32 anyway (the same fp32 result), in ~9 kernels instead of 2."""
    if x.dtype in (torch.bfloat16, torch.float16) and scale.dtype == torch.float32:
        x = x.float()
    if x.dtype == scale.dtype == torch.float32 and not (torch.is_grad_enabled() and (
            x.requires_grad or scale.requires_grad)):  # no gradient (evaluation): the same numbers in 5
        zf = zp.to(x.dtype)  # broadcast passes, 10-25x faster on CPU than the fused per-channel kernel
        return torch.round(x * (1.0 / scale)).add_(zf).clamp_(qmin, qmax).sub_(zf).mul_(scale)
    if (x.dtype == torch.float32 and scale.dtype == torch.float32 and isinstance(qmin, float | int)
            and isinstance(qmax, float | int) and x.dim() == 2 and scale.dim() == 2):
        axis = 0 if scale.shape == (x.shape[0], 1) else 1 if scale.shape == (1, x.shape[1]) else None
        if axis is not None:
            return torch.fake_quantize_per_channel_affine(
                x, scale.reshape(-1), zp.reshape(-1).to(torch.int32), axis, int(qmin), int(qmax))
    return _FakeQuantSTE.apply(x, scale, zp, qmin, qmax)


def fake_quant_lsq(x, scale, zp, qmin, qmax, g: float) -> torch.Tensor:
    """LSQ (Esser et al. 2020): same forward, gradient to ``scale`` scaled by ``g``."""
    s = grad_scale(scale, g)
    q = torch.clamp(round_ste(x * (1.0 / s)) + zp, qmin, qmax)
    return (q - zp) * s


def sign_quant(x, alpha) -> torch.Tensor:
    """1-bit symmetric: ``alpha * sign(x)`` (sign(0)=+1), straight-through gradient."""
    q = torch.where(x >= 0, alpha, -alpha)
    return pass_through(x, q)


# ---------------------------------------------------------------- range observers: (G, n) -> (G, 1) x2


def observe_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin(1, keepdim=True), x.amax(1, keepdim=True)


def observe_percentile(x: torch.Tensor, pct: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-rank percentile per row: k-th smallest with k = ceil(pct/100 * n) (and mirrored for lo)."""
    n = x.shape[1]
    k = min(n, max(1, int(-(-pct * n // 100))))
    hi = x.kthvalue(k, dim=1, keepdim=True).values
    lo = x.kthvalue(n - k + 1, dim=1, keepdim=True).values
    return lo, hi


def observe_mse(x, qmin, qmax, symmetric: bool, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink [min, max] by ratios i/grid (i=1..grid), keep per row the range with least squared error."""
    lo0, hi0 = observe_minmax(x)
    best_lo, best_hi = lo0, hi0
    best_err = torch.full_like(lo0, float("inf"))
    for i in range(1, grid + 1):
        r = i / grid
        s, z = scale_zero_point(lo0 * r, hi0 * r, qmin, qmax, symmetric)
        err = (fake_quant(x, s, z, qmin, qmax) - x).pow(2).sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo0 * r, best_lo), torch.where(better, hi0 * r, best_hi)
    return best_lo, best_hi


# ---------------------------------------------------------------- codebooks


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a row-wise sorted ``codebook`` (G, K) for x (G, n); ties -> lower."""
    mid = (codebook[:, 1:] + codebook[:, :-1]) / 2  # (G, K-1)
    return torch.searchsorted(mid.contiguous(), x.contiguous())


def kmeans_fit(x: torch.Tensor, k: int, iters: int, init: str = "quantile",
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """1-D Lloyd k-means per row of x (G, n) -> sorted centroids (G, k); deterministic init.

    ``weight`` (G, n) or (1, n), >= 0: each value's weight in the centroid means (weighted k-means;
    assignment stays nearest-centroid, which is optimal for any positive point weight)."""
    n = x.shape[1]
    pos = (torch.arange(k, device=x.device, dtype=x.dtype) + 0.5) / k  # (k,)
    if init == "quantile":
        idx = (pos * n).long().clamp_max(n - 1)
        c = x.sort(dim=1).values[:, idx]
    else:
        lo, hi = observe_minmax(x)
        c = lo + (hi - lo) * pos
    w = torch.ones_like(x) if weight is None else weight.to(x.dtype).expand_as(x)
    wx = x * w
    for _ in range(iters):
        codes = nearest_code(x, c)  # (G, n)
        sums = torch.zeros_like(c).scatter_add_(1, codes, wx)
        cnt = torch.zeros_like(c).scatter_add_(1, codes, w)
        new = torch.where(cnt > 0, sums / torch.where(cnt > 0, cnt, 1.0), c).sort(dim=1).values
        if torch.equal(new, c):
            break
        c = new
    return c


def binary_signs(bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All 2^bits sign patterns (2^bits, bits): entry [c, i] = +1 if bit i of c is set else -1."""
    c = torch.arange(2 ** bits, device=device)
    return ((c[:, None] >> torch.arange(bits, device=device)) & 1).to(dtype) * 2 - 1


def binary_codebook(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted values of sum_i alpha_i b_i over all sign patterns, and the pattern of each: (G, 2^B) x2."""
    signs = binary_signs(alpha.shape[1], alpha.device, alpha.dtype)  # (2^B, B)
    values = alpha @ signs.t()  # (G, 2^B)
    sorted_vals, order = values.sort(dim=1)
    return sorted_vals, order


def binary_fit(x: torch.Tensor, bits: int, iters: int) -> torch.Tensor:
    """Binary-code alphas (G, B) for x (G, n): greedy, then alternating LS-alpha / optimal re-pick of b."""
    r, alphas = x, []
    for _ in range(bits):  # greedy residual: a = mean|r|, b = sign(r)
        b = torch.where(r >= 0, 1.0, -1.0).to(x.dtype)
        a = r.abs().mean(1, keepdim=True)
        alphas.append(a)
        r = r - a * b
    alpha = torch.cat(alphas, 1)  # (G, B)
    err = _binary_error(x, alpha)
    signs = binary_signs(bits, x.device, x.dtype)
    eye = torch.eye(bits, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        vals, order = binary_codebook(alpha)
        bmat = signs[order.gather(1, nearest_code(x, vals))]  # (G, n, B) best signs given alpha
        btb = bmat.transpose(1, 2) @ bmat  # (G, B, B)
        btx = (bmat.transpose(1, 2) @ x.unsqueeze(-1))  # (G, B, 1)
        ridge = 1e-6 * btb.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(EPS)[:, None, None] * eye
        new = torch.linalg.solve(btb + ridge, btx).squeeze(-1)  # least-squares alpha
        new_err = _binary_error(x, new)
        better = new_err < err
        if not better.any():
            break
        alpha = torch.where(better, new, alpha)
        err = torch.where(better, new_err, err)
    return alpha


def _binary_error(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    vals, _ = binary_codebook(alpha)
    return (vals.gather(1, nearest_code(x, vals)) - x).pow(2).sum(1, keepdim=True)  # (G, 1)
