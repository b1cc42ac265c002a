"""Integer-domain W8A8 linear: the student's eval forward as an int8 GEMM computes it, bit for bit.

A :class:`~sdq.quant.QuantLinear` whose input is quantized per tensor (uniform, <= 8 bits), whose weight
is uniform symmetric per channel/tensor (<= 8 bits) and that is not ``rotated`` evaluates (eval mode, no
grad) with the scales factored out of the sum, as integer hardware does::

    y = (c_x @ c_w^T) * (s_x * s_w) + b,   c_x = clamp(round(x * (1/s_x)) + z, qmin, qmax) - z,
                                            c_w = clamp(round(w * (1/s_w)), wmin, wmax)

``c_x @ c_w^T`` is an integer, exact in fp32 while |partial sums| < 2^24, so the student's eval forward
(:func:`int_domain_linear`, fp32 matmul of codes) and its int8 export (:class:`sdq.int8.Int8Linear`, which
takes its formulas from here) produce identical floats. Mathematically it is the fake-quantized product
``fq(x) @ fq(w)^T + b``; only float rounding differs from the training forward.

>>> if int_domain_ok(qlinear):                  # per-tensor activations, uniform symmetric weights
...     y = int_domain_linear(qlinear, x)       # what the student's eval forward does
"""

from __future__ import annotations

import torch
from torch import nn

from sdq.quant.uniform import UniformQuantizer

Scalar = float | torch.Tensor


def int_domain_ok(layer: nn.Module) -> bool:
    """True when ``layer`` (a QuantLinear) runs as an int8 GEMM: see the module doc for the conditions."""
    aq, wq = getattr(layer, "act_quantizer", None), getattr(layer, "weight_quantizer", None)
    if not (isinstance(aq, UniformQuantizer) and isinstance(wq, UniformQuantizer)) or getattr(layer, "rotated", False):
        return False
    if not (aq._enabled and wq._enabled and aq._initialized and wq._initialized):
        return False
    if aq._phase == 0 or wq._phase == 0 or aq.sign_mode or wq.sign_mode:  # calibrating: observers must see x
        return False
    return (aq.cfg.granularity == "tensor" and aq.cfg.bits <= 8 and wq.cfg.bits <= 8 and wq.cfg.symmetric
            and wq.cfg.granularity in ("channel", "tensor") and wq.rows_uniform()
            and layer.weight.dtype == torch.float32)


def shifted_codes(x: torch.Tensor, inv: Scalar, shift: Scalar, lo: float, hi: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """``clamp(round(x * inv) + shift, lo, hi)`` as ``dtype`` (x fp32 (M, K), ``inv`` exactly an fp32 value;
    python floats or 0-dim tensors): the one input-code formula of the student and every int8 kernel.

    >>> a = shifted_codes(x2, 1 / s, z - qmin, 0.0, qmax - qmin, torch.uint8)   # c - qmin, (M, K) uint8
    """
    return torch.mul(x, inv).round_().add_(shift).clamp_(lo, hi).to(dtype)  # (M, K) -> (M, K) dtype


def input_codes(x2: torch.Tensor, inv: Scalar, z: Scalar, qmin: float, qmax: float) -> torch.Tensor:
    """``clamp(round(x * (1/s)) + z, qmin, qmax) - z``, integer-valued fp32 (M, K): the student's codes
    (``inv``/``z`` tensors or floats); :func:`shifted_codes` with shift ``z``, minus ``z``."""
    return shifted_codes(x2, inv, z, qmin, qmax, x2.dtype).sub_(z)


def act_consts(aq: UniformQuantizer) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(1/s_x, z, qmin, qmax) of a per-tensor activation quantizer (0-dim tensors: no host sync); 1/s_x as
    the fake-quant kernel computes it."""
    qmin, qmax = aq.qrange()
    return 1.0 / aq.scale.detach().reshape(()), aq.zero_point.reshape(()), float(qmin), float(qmax)


def combined_scale(act_scale: torch.Tensor, w_scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """s_x * s_w per output feature (N,), fp32: one definition for the student and its int8 export."""
    return (act_scale.reshape(()) * w_scale.reshape(-1)).expand(out_features).contiguous()


def rescale(acc: torch.Tensor, comb: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The float epilogue shared by student and export: ``acc * comb + bias`` (acc (M, N) fp32 integers),
    written into ``acc`` (no new (M, N) buffer), rounded after the product and after the sum (no fused
    multiply-add), as oneDNN's int8 linear does it inside its GEMM (:mod:`sdq.int8.onednn_gemm`)."""
    acc.mul_(comb)
    return acc if bias is None else acc.add_(bias)


def int_domain_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The student's eval forward of an int-domain QuantLinear: (..., K) -> (..., N)."""
    aq, wq = layer.act_quantizer, layer.weight_quantizer
    inv, z, qmin, qmax = act_consts(aq)
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    cx = input_codes(x2, inv, z, qmin, qmax)  # (M, K) integer-valued
    cw = wq.quantize_int(layer.weight)[0].to(cx.dtype)  # (N, K) the export's codes
    acc = torch.nn.functional.linear(cx, cw)  # (M, N) exact integers in fp32
    bias = None if layer.bias is None else layer.bias.detach()
    y = rescale(acc, combined_scale(aq.scale.detach(), wq.scale.detach(), layer.out_features), bias)
    return y.reshape(*x.shape[:-1], layer.out_features)
