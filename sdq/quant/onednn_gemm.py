"""Exact u8 x s8 integer GEMM through oneDNN inside torch: 7-bit weight codes on x86 CPUs without VNNI, any
int8 codes where VNNI / AMX accumulate in int32.

oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the kernel behind torch's x86 int8 inference)
multiplies byte pairs with ``vpmaddubsw`` where the CPU has no VNNI: its int16 pair sums saturate on 8-bit
weight codes (a 64 x 512 x 96 product on codes +-127/128 was off by 8.3e6 here), but weight codes within
[-64, 64] keep them within 2 * 255 * 64 = 32640, so the int32 result is exact (7-bit weights,
``quant=w7a8_int8``). With VNNI (or AMX) the byte products go straight into int32 and full 8-bit codes are
exact too (:func:`onednn_full_range`, checked at runtime at the largest pair sums). It runs in torch's own
thread pool: no hand-over of the cores to another runtime between the GEMM and the torch ops around it
(with onnxruntime's pool in between, ``OMP_WAIT_POLICY=PASSIVE`` took ~0.3 s off a me5_small batch of
32 x 128: torch's OpenMP threads spin while onnxruntime's run).

Unit scales and an fp32 output make oneDNN return ``sum_k (a - z) w`` as floats, exact below 2^24. Given
the per-channel scales ``comb`` (N,) and a bias, oneDNN also applies the student's epilogue inside the GEMM:
``acc * comb + bias``, rounded after the product and after the sum, the same floats as
:func:`sdq.quant.intlinear.rescale` (checked once per process: :func:`onednn_fused_epilogue`)::

    g = OnednnIntGemm(codes)           # (N, K) int8 codes within [-64, 64]
    acc = g(a, z)                      # a (M, K) uint8 input codes, zero point z -> (M, N) fp32 integers
    y = OnednnIntGemm(codes, comb, bias)(a, z)   # == rescale(acc, comb, bias), no extra pass
"""

from __future__ import annotations

import functools

import torch

from sdq.quant.ort_gemm import cpu_has_vnni, s8_exact


def _qlinear(a: torch.Tensor, z: int, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(a, 1.0, int(z), packed, scales, zeros, bias, 1.0, 0, torch.float32,
                                              "none", [], "")


class OnednnIntGemm:
    """``(a - z) @ codes^T`` (exact integers, fp32) for one weight of codes within [-64, 64] (any int8 codes
    where :func:`onednn_full_range`), times ``comb`` (N,) plus ``bias`` (N,) when given; not a Module."""

    def __init__(self, codes: torch.Tensor, comb: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"OnednnIntGemm needs (N, K) int8 codes, got {tuple(codes.shape)} {codes.dtype}")
        if not onednn_exact_on(codes):
            raise ValueError("OnednnIntGemm needs weight codes within [-64, 64] on this CPU (no VNNI: wider "
                             f"codes saturate); got [{int(codes.min())}, {int(codes.max())}]")
        n, self.fused = codes.shape[0], comb is not None
        self.packed = torch.ops.onednn.qlinear_prepack(codes.contiguous(), None)
        self.scales = torch.ones(n) if comb is None else comb.float().contiguous().clone()
        self.zeros = torch.zeros(n, dtype=torch.int64)
        self.bias = None if bias is None else bias.float().contiguous().clone()

    def __call__(self, a: torch.Tensor, z: int) -> torch.Tensor:  # (M, K) uint8 -> (M, N) fp32
        return _qlinear(a, z, self.packed, self.scales, self.zeros, self.bias)


def _probe(lo: int = -64, hi: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight codes at ``lo`` / ``hi``, input codes with rows of 255: the largest pair sums of those codes."""
    g = torch.Generator().manual_seed(0)
    codes = torch.where(torch.rand(24, 256, generator=g) < 0.5, lo, hi).to(torch.int8)  # (N, K)
    codes[:4], codes[4:8] = hi, lo
    a = torch.randint(0, 256, (16, 256), generator=g).to(torch.uint8)  # (M, K)
    a[:4] = 255
    return codes, a, torch.randn(2, 24, generator=g)


@functools.cache
def onednn_available() -> bool:
    """True when torch's oneDNN int8 linear runs here and passes an exactness check at the largest 7-bit
    pair sums (inputs 255 and 0 against weights -64 and 64); asked once per process."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    return _exact_at(-64, 64)


def _exact_at(lo: int, hi: int) -> bool:
    """oneDNN's u8 x s8 product equals the int64 one at the largest pair sums of codes in [lo, hi]."""
    try:
        codes, a, _ = _probe(lo, hi)
        packed = torch.ops.onednn.qlinear_prepack(codes, None)
        ones, zeros = torch.ones(codes.shape[0]), torch.zeros(codes.shape[0], dtype=torch.int64)
        for z in (0, 128):
            if not torch.equal(_qlinear(a, z, packed, ones, zeros, None).long(), (a.long() - z) @ codes.long().t()):
                return False
    except (RuntimeError, NotImplementedError):  # no oneDNN int8 support on this CPU / build
        return False
    return True


@functools.cache
def onednn_full_range() -> bool:
    """True when oneDNN's u8 x s8 GEMM is exact on full int8 weight codes here: CPUs with VNNI (AMX CPUs have
    it too, :func:`~sdq.quant.ort_gemm.cpu_has_vnni`) accumulate byte products in int32, with no int16 pair sums
    to saturate; checked once per process at inputs 255 against codes -128 and 127. False without VNNI (AVX2's
    ``vpmaddubsw`` saturates there: 7-bit codes only)."""
    return onednn_available() and cpu_has_vnni() and _exact_at(-128, 127)


def onednn_exact_on(codes: torch.Tensor) -> bool:
    """True when :class:`OnednnIntGemm` is exact on these int8 weight codes here: within [-64, 64], or any
    codes where :func:`onednn_full_range`."""
    return s8_exact(codes) or onednn_full_range()


@functools.cache
def onednn_fused_epilogue() -> bool:
    """True when oneDNN's epilogue (``acc * comb + bias`` inside the GEMM) gives the same floats as
    :func:`sdq.quant.intlinear.rescale` here (an FMA, e.g. on other ISAs, would not); asked once per process."""
    from sdq.quant.intlinear import rescale

    if not onednn_available():
        return False
    codes, a, r = _probe()
    comb, bias = r[0].abs() * 1e-4 + 1e-5, r[1]
    for z in (0, 117):
        acc = ((a.long() - z) @ codes.long().t()).float()  # (M, N) exact
        if not torch.equal(OnednnIntGemm(codes, comb, bias)(a, z), rescale(acc, comb, bias)):
            return False
    return True
