"""Exact u8 x s8 integer GEMM through oneDNN inside torch, for 7-bit weight codes on x86 CPUs without VNNI.

oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the kernel behind torch's x86 int8 inference)
multiplies byte pairs with ``vpmaddubsw`` where the CPU has no VNNI: its int16 pair sums saturate on 8-bit
weight codes (a 64 x 512 x 96 product on codes +-127/128 was off by 8.3e6 here), but weight codes within
[-64, 64] keep them within 2 * 255 * 64 = 32640, so the int32 result is exact (7-bit weights,
``quant=w7a8_int8``). It runs in torch's own thread pool: no hand-over of the cores to another runtime
between the GEMM and the torch ops around it (with onnxruntime's pool in between, ``OMP_WAIT_POLICY=PASSIVE``
took ~0.3 s off a me5_small batch of 32 x 128: torch's OpenMP threads spin while onnxruntime's run).

Unit scales and an fp32 output make oneDNN return ``sum_k (a - z) w`` as floats, exact below 2^24::

    g = OnednnIntGemm(codes)           # (N, K) int8 codes within [-64, 64]
    acc = g(a, z)                      # a (M, K) uint8 input codes, zero point z -> (M, N) fp32 integers
"""

from __future__ import annotations

import functools

import torch

from sdq.quant.ort_gemm import s8_exact


def _qlinear(a: torch.Tensor, z: int, packed: torch.Tensor, ones: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(a, 1.0, int(z), packed, ones, zeros, None, 1.0, 0, torch.float32,
                                              "none", [], "")


class OnednnIntGemm:
    """``(a - z) @ codes^T`` (exact integers, fp32) for one weight of codes within [-64, 64]; not a Module."""

    def __init__(self, codes: torch.Tensor):
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"OnednnIntGemm needs (N, K) int8 codes, got {tuple(codes.shape)} {codes.dtype}")
        if not s8_exact(codes):
            raise ValueError("OnednnIntGemm needs weight codes within [-64, 64] (exact without VNNI); "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        n = codes.shape[0]
        self.packed = torch.ops.onednn.qlinear_prepack(codes.contiguous(), None)
        self.ones, self.zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)

    def __call__(self, a: torch.Tensor, z: int) -> torch.Tensor:  # (M, K) uint8 -> (M, N) fp32
        return _qlinear(a, z, self.packed, self.ones, self.zeros)


@functools.cache
def onednn_available() -> bool:
    """True when torch's oneDNN int8 linear runs here and passes an exactness check at the largest 7-bit
    pair sums (inputs 255 and 0 against weights -64 and 64); asked once per process."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        codes = torch.where(torch.rand(24, 256, generator=g) < 0.5, -64, 64).to(torch.int8)  # (N, K)
        codes[:4] = 64
        a = torch.randint(0, 256, (16, 256), generator=g).to(torch.uint8)
        a[:4] = 255
        gemm = OnednnIntGemm(codes)
        for z in (0, 128):
            if not torch.equal(gemm(a, z).long(), (a.long() - z) @ codes.long().t()):
                return False
    except (RuntimeError, NotImplementedError):  # no oneDNN int8 support on this CPU / build
        return False
    return True
