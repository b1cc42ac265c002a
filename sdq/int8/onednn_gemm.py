"""Exact u8 x s8 integer GEMM through oneDNN inside torch, with the student's epilogue inside it: 7-bit weight
codes on x86 CPUs without VNNI.

oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the kernel behind torch's x86 int8 inference)
multiplies byte pairs with ``vpmaddubsw`` where the CPU has no VNNI: its int16 pair sums saturate on 8-bit
weight codes (a 64 x 512 x 96 product on codes +-127/128 was off by 8.3e6), but weight codes within
[-64, 64] keep them within 2 * 255 * 64 = 32640, so the int32 result is exact (7-bit weights,
``quant=w7a8_int8``). It runs in torch's own thread pool: no hand-over of the cores to another runtime
between the GEMM and the torch ops around it.

Given the per-channel scales ``comb`` (N,) and a bias, oneDNN applies the student's epilogue inside the GEMM:
``acc * comb + bias``, rounded after the product and after the sum, the same floats as
:func:`sdq.quant.intdomain.rescale`. Both the integer product at the largest 7-bit pair sums and the
epilogue are checked once per process (:func:`onednn_available`); where either differs, ``Int8Linear``
does not use this kernel::

    g = OnednnIntGemm(codes, comb, bias)   # (N, K) int8 codes within [-64, 64], (N,), (N,) or None
    y = g(a, z)                            # a (M, K) uint8 input codes, zero point z -> (M, N) fp32
                                           # == rescale((a - z) @ codes^T, comb, bias)
"""

from __future__ import annotations

import functools

import torch

from sdq.int8.cpu import s8_exact
from sdq.quant.intdomain import rescale


def _qlinear(a: torch.Tensor, z: int, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(a, 1.0, int(z), packed, scales, zeros, bias, 1.0, 0, torch.float32,
                                              "none", [], "")


class OnednnIntGemm:
    """``(a - z) @ codes^T * comb + bias`` (fp32; two roundings) for one weight of codes within [-64, 64];
    not a Module. Unit ``comb`` and no bias give the exact integer product."""

    def __init__(self, codes: torch.Tensor, comb: torch.Tensor, bias: torch.Tensor | None = None):
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"OnednnIntGemm needs (N, K) int8 codes, got {tuple(codes.shape)} {codes.dtype}")
        if not s8_exact(codes):
            raise ValueError("OnednnIntGemm needs weight codes within [-64, 64] (wider codes saturate without "
                             f"VNNI); got [{int(codes.min())}, {int(codes.max())}]")
        n = codes.shape[0]
        self.packed = torch.ops.onednn.qlinear_prepack(codes.contiguous(), None)
        self.scales = comb.float().contiguous().clone()  # (N,)
        self.zeros = torch.zeros(n, dtype=torch.int64)
        self.bias = None if bias is None else bias.float().contiguous().clone()

    def __call__(self, a: torch.Tensor, z: int) -> torch.Tensor:  # (M, K) uint8 -> (M, N) fp32
        return _qlinear(a, z, self.packed, self.scales, self.zeros, self.bias)


def _probe() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight codes at -64 / 64, input codes with rows of 255 (the largest 7-bit pair sums), random rows."""
    g = torch.Generator().manual_seed(0)
    codes = torch.where(torch.rand(24, 256, generator=g) < 0.5, -64, 64).to(torch.int8)  # (N, K)
    codes[:4], codes[4:8] = 64, -64
    a = torch.randint(0, 256, (16, 256), generator=g).to(torch.uint8)  # (M, K)
    a[:4] = 255
    return codes, a, torch.randn(2, 24, generator=g)


@functools.cache
def onednn_available() -> bool:
    """True when torch's oneDNN int8 linear runs here, its product equals the int64 one at the largest 7-bit
    pair sums (inputs 255 and 0 against weights -64 and 64) and its epilogue gives :func:`rescale`'s floats
    (an FMA would not); asked once per process."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    codes, a, r = _probe()
    n = codes.shape[0]
    try:
        for z, comb, bias in ((0, torch.ones(n), None), (128, torch.ones(n), None),
                              (117, r[0].abs() * 1e-4 + 1e-5, r[1])):
            acc = ((a.long() - z) @ codes.long().t()).float()  # (M, N) exact
            if not torch.equal(OnednnIntGemm(codes, comb, bias)(a, z), rescale(acc, comb, bias)):
                return False
    except (RuntimeError, NotImplementedError):  # no oneDNN int8 support on this CPU / build
        return False
    return True
