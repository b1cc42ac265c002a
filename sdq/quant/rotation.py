"""Randomized Hadamard rotation of a Linear's input space (QuaRot, Ashkboos et al. 2024).

``y = x W^T = rotate(x) rotate(W)^T`` for the orthogonal map ``rotate`` on the last dim: a fixed ±1 sign per
channel, then the Hadamard transform (Sylvester for 2^k, Paley's 12 x 12 Kronecker 2^k), scaled by 1/sqrt(n);
the transform is applied as products with its Kronecker factors (12, and H_p as one GEMM up to p = 256).
Rotated, an outlier channel is spread over all channels, so a per-token activation range is set by the
token's norm rather than by its largest channel. Sizes: 2^k or 12 * 2^k (384, 768, 1024, 1536, 3072, 4096).

>>> y = rotate(x)                     # (..., n), same norm per row
>>> torch.allclose(rotate(y, inverse=True), x, atol=1e-5)  # its inverse (up to float rounding)
"""

from __future__ import annotations

import math

import torch

_CACHE: dict[tuple, torch.Tensor] = {}


def supported(n: int) -> bool:
    """True when ``n`` is 2^k or 12 * 2^k (k >= 0)."""
    m = n // 12 if n % 12 == 0 else n
    return m >= 1 and m & (m - 1) == 0


def paley12() -> torch.Tensor:
    """The 12 x 12 Hadamard matrix of Paley's first construction (q = 11): H H^T = 12 I, entries ±1."""
    residues = {(i * i) % 11 for i in range(1, 11)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, 11)]
    h = torch.zeros(12, 12)
    h[0, 1:], h[1:, 0] = 1.0, -1.0
    for i in range(11):
        for j in range(11):
            h[1 + i, 1 + j] = chi[(j - i) % 11]
    return h + torch.eye(12)


def _signs(n: int, device, dtype) -> torch.Tensor:
    """The fixed ±1 per channel for size n (seeded by n: the same on every machine and in every process)."""
    key = ("signs", n, str(device), dtype)
    if key not in _CACHE:
        g = torch.Generator().manual_seed(n)
        _CACHE[key] = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(device=device, dtype=dtype)
    return _CACHE[key]


def _factor(name: str, k: int, device, dtype) -> torch.Tensor:
    """A cached dense Hadamard factor: ``h12`` (12 x 12, Paley) or ``syl`` (k x k, Sylvester, symmetric)."""
    key = (name, k, str(device), dtype)
    if key not in _CACHE:
        if name == "h12":
            h = paley12()
        else:
            h = torch.ones(1, 1)
            while h.shape[0] < k:
                h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _CACHE[key] = h.to(device=device, dtype=dtype)
    return _CACHE[key]


DENSE_MAX = 256  # H_p as one dense p x p product up to this p (one GEMM), else as H_p1 (x) H_p2


def dims(n: int) -> tuple[int, int, int]:
    """``(m, p1, p2)`` with ``n = m * p1 * p2``: the transform is H12 (x) H_p (m = 12) or H_p (m = 1) with
    p = p1 * p2, H_p = H_p1 (x) H_p2 (Sylvester factors of about sqrt(p)); ValueError for an unsupported n
    (:func:`supported`)."""
    if not supported(n):
        raise ValueError(f"a Hadamard rotation needs 2^k or 12 * 2^k features, got {n}")
    m = 12 if n % 12 == 0 else 1
    p = n // m
    p1 = 1 << ((p.bit_length() - 1) // 2)
    return m, p1, p // p1


def factors(n: int, device=None, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The pieces of :func:`rotate` for size ``n`` (cached, on ``device``, CPU by default), also for graphs that
    apply it themselves (ONNX), all ±1: ``signs`` (n,); ``syl_p`` (p, p) when p <= :data:`DENSE_MAX`, else
    ``syl_p1`` (p1, p1) and ``syl_p2`` (p2, p2); ``h12`` (12, 12) when m = 12. With y = (x * signs) reshaped to
    (N, m, p): y @ syl_p (or syl_p1 @ y.reshape(N, m, p1, p2) @ syl_p2), then (y^T @ h12^T)^T per row, then
    / sqrt(n).

    >>> f = factors(384); f["syl_p"].shape, f["h12"].shape     # (32, 32), (12, 12): 384 = 12 * 32
    """
    m, p1, p2 = dims(n)
    device = torch.device("cpu") if device is None else device
    p = p1 * p2
    out = {"signs": _signs(n, device, dtype)}
    if p <= DENSE_MAX:
        out["syl_p"] = _factor("syl", p, device, dtype)
    else:
        out |= {"syl_p1": _factor("syl", p1, device, dtype), "syl_p2": _factor("syl", p2, device, dtype)}
    if m > 1:
        out["h12"] = _factor("h12", 12, device, dtype)
    return out


def rotate(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The orthogonal rotation of the last dim of ``x`` (..., n) (``inverse``: its transpose); ValueError for
    an unsupported n (:func:`supported`)."""
    n = x.shape[-1]
    m, p1, p2 = dims(n)
    p = p1 * p2
    f = factors(n, x.device, x.dtype)
    y = x.reshape(-1, n)  # (N, n)
    if not inverse:
        y = y * f["signs"]
    if "syl_p" in f:  # H_p on each of the m blocks as one GEMM (H_p is symmetric)
        y = y.reshape(-1, m, p) @ f["syl_p"]  # (N, m, p)
    else:
        y = f["syl_p1"] @ (y.reshape(-1, m, p1, p2) @ f["syl_p2"])  # (N, m, p1, p2)
    if m > 1:  # the m = 12 blocks mixed by H12 (forward) or H12^T (inverse), as one GEMM on (N p, 12)
        h = f["h12"]
        y = (y.reshape(-1, m, p).transpose(1, 2) @ (h if inverse else h.T)).transpose(1, 2)  # (N, m, p)
    y = y.reshape(-1, n) * (1.0 / math.sqrt(n))
    if inverse:
        y = y * f["signs"]
    return y.reshape(x.shape)
