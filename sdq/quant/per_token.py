"""Dynamic per-token activation quantizer: each token's range is its own min/max, taken on every forward.

No calibrated state (torchao's and onnxruntime ``quantize_dynamic``'s activation scheme); the scale and zero
point of a token are computed from it at run time, so padding and long sentences never widen another token's
range. Paired with ``rotate`` (:mod:`sdq.quant.rotation`) it is QuaRot's activation scheme.

>>> q = PerTokenQuantizer(QuantizerConfig(bits=8, granularity="token", symmetric=False), (384,), "act")
>>> y = q(x)                                   # x (..., 384): 8-bit codes per token, dequantized
"""

from __future__ import annotations

import torch

from sdq.quant import functional as F
from sdq.quant.base import QuantizerBase
from sdq.quant.config import QuantizerConfig


def fake_quant_per_token(x2d: torch.Tensor, qmin: float, qmax: float, symmetric: bool) -> torch.Tensor:
    """(N, C) -> fake-quantized with each row's own min-max range (straight-through gradient to x); the
    student's arithmetic and its export's (:mod:`sdq.export.torch_int8`).

    >>> y = fake_quant_per_token(x.reshape(-1, 384), 0, 255, symmetric=False)
    """
    with torch.no_grad():
        lo, hi = F.observe_minmax(x2d.detach().float())  # (N, 1) each
        scale, zp = F.scale_zero_point(lo, hi, qmin, qmax, symmetric)
    return F.fake_quant(x2d, scale, zp, qmin, qmax)


class PerTokenQuantizer(QuantizerBase):
    """``granularity=token`` for activations (uniform scheme): min-max per row of the (N, C) view."""

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "act"):
        if kind != "act" or cfg.scheme != "uniform":
            raise ValueError("PerTokenQuantizer quantizes activations with scheme=uniform")
        super().__init__(cfg, shape, kind)

    def _layout(self) -> tuple[int, int]:
        return 1, -1  # no stored params: the groups (tokens) are only known at run time

    def view2d(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])  # (N, C): one row (one range) per token

    def unview(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return y.reshape(like.shape)

    def _fit(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> None:  # nothing to fit: ranges are dynamic
        pass

    def _quantize(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> torch.Tensor:
        """(N, C) -> fake-quantized with each row's own min-max range (straight-through gradient to x)."""
        qmin, qmax = self.qrange()
        return fake_quant_per_token(x2d, qmin, qmax, self.cfg.symmetric)

    def qrange(self) -> tuple[float, float]:
        """(qmin, qmax) of the codes, python floats."""
        return F.qrange(self.cfg.bits, self.cfg.symmetric, self.cfg.narrow_range)

    def storage_bits(self) -> tuple[float, float]:
        return float(self.cfg.bits), 0.0
