"""Uniform (affine) fake quantizer with range observers, optional learned step size (LSQ) and per-row bits.

Buffers: ``min_val``/``max_val`` (G, 1) observed range, ``scale`` (G, 1) (an nn.Parameter for
scheme=lsq), ``zero_point`` (G, 1) integer-valued floats, ``row_bits`` (R,) int8 bits per weight row
(non-tensor weight granularities; set different values for mixed precision per token/row).

>>> q = UniformQuantizer(QuantizerConfig(bits=4, granularity="channel"), (16, 32))
>>> y = q(w)                                # calibrate phase: ranges from w, then fake-quant
>>> codes, params = q.quantize_int(w)       # int codes (w.shape) + scale/zero_point/qmin/qmax (G, 1)
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from sdq.quant import functional as F
from sdq.quant.base import QuantizerBase, tensor_key
from sdq.quant.config import QuantizerConfig


class UniformQuantizer(QuantizerBase):
    """Scheme ``uniform`` (observer ranges) or ``lsq`` (step size learned in the ``learn`` phase)."""

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        super().__init__(cfg, shape, kind)
        g = self.n_groups
        self.sign_mode = cfg.bits == 1 and cfg.symmetric
        self.register_buffer("min_val", torch.zeros(g, 1))
        self.register_buffer("max_val", torch.zeros(g, 1))
        self.register_buffer("zero_point", torch.zeros(g, 1))
        if cfg.scheme == "lsq":
            self.scale = nn.Parameter(torch.ones(g, 1))  # gets gradients only in the learn phase
        else:
            self.register_buffer("scale", torch.ones(g, 1))
        if kind == "weight" and cfg.granularity != "tensor":
            self.register_buffer("row_bits", torch.full((self.shape[0],), cfg.bits, dtype=torch.int8))
        else:
            self.row_bits = None
        self._rows_key, self._rows_uniform = None, True

    def rows_uniform(self) -> bool:
        """Every row at ``cfg.bits`` (python-number qmin/qmax: the fused kernel path). Re-checked only when
        ``row_bits`` was written or moved (its storage or version counter changed), so no per-call sync."""
        if self.row_bits is None:
            return True
        key = tensor_key(self.row_bits)
        if key != self._rows_key:
            self._rows_key, self._rows_uniform = key, bool((self.row_bits == self.cfg.bits).all())
        return self._rows_uniform

    # ------------------------------------------------------------------ ranges
    def qrange(self, gidx: torch.Tensor | None = None) -> tuple:
        """(qmin, qmax): python floats, or (G', 1) tensors from ``row_bits``."""
        if self.rows_uniform():
            bits = self.cfg.bits
        else:
            bits = self.row_bits.float().repeat_interleave(self.groups_per_row)[:, None]  # (G, 1)
            bits = self.take(bits, gidx)
        return F.qrange(bits, self.cfg.symmetric, self.cfg.narrow_range)

    def _observe(self, x2d: torch.Tensor, qmin, qmax) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        if self.sign_mode:  # alpha = mean|x| (optimal L2 scale for sign)
            a = x2d.abs().mean(1, keepdim=True)
            return -a, a
        if c.observer == "percentile":
            return F.observe_percentile(x2d, c.percentile)
        if c.observer == "mse":
            return F.observe_mse(x2d, qmin, qmax, c.symmetric, c.mse_grid)
        return F.observe_minmax(x2d)

    def _fit(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> None:
        qmin, qmax = self.qrange(gidx)
        lo, hi = self._observe(x2d.float(), qmin, qmax)
        if self.kind == "act":
            lo, hi = self._combine(*_all_reduce(lo, hi, self.cfg.observer))
        self.put_(self.min_val, gidx, lo)
        self.put_(self.max_val, gidx, hi)
        self._update_scale(gidx)

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running activation statistics: minmax keeps extremes, others average with ``ema_decay``."""
        if not self._initialized:
            return lo, hi
        if self.cfg.observer == "minmax":
            return torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        d = self.cfg.ema_decay
        return d * self.min_val + (1 - d) * lo, d * self.max_val + (1 - d) * hi

    @torch.no_grad()
    def _update_scale(self, gidx: torch.Tensor | None = None) -> None:
        lo, hi = self.take(self.min_val, gidx), self.take(self.max_val, gidx)
        if self.sign_mode:
            scale, zp = hi.clamp_min(F.EPS), torch.zeros_like(hi)
        else:
            qmin, qmax = self.qrange(gidx)
            scale, zp = F.scale_zero_point(lo, hi, qmin, qmax, self.cfg.symmetric)
        self.put_(self.scale.data, gidx, scale)
        self.put_(self.zero_point, gidx, zp)

    # ------------------------------------------------------------------ quantize
    def _quantize(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> torch.Tensor:
        scale, zp = self.take(self.scale, gidx), self.take(self.zero_point, gidx)
        if self.sign_mode:
            return F.sign_quant(x2d, scale.to(x2d.dtype))
        qmin, qmax = self.qrange(gidx)
        if self.cfg.scheme == "lsq" and self._phase == 2:  # qmax of cfg.bits (also with per-row bits)
            b = self.cfg.bits
            g = 1.0 / math.sqrt(x2d.shape[1] * (2 ** (b - 1) - 1 if self.cfg.symmetric else 2 ** b - 1))
            return F.fake_quant_lsq(x2d, scale, zp, qmin, qmax, g)
        if self.kind == "act" and self.cfg.granularity != "tensor":  # x2d: the (C, N) view of (N, C) memory
            return F.fake_quant(x2d.t(), scale.detach().t(), zp.t(), qmin, qmax).t()  # no transposed copies
        return F.fake_quant(x2d, scale.detach(), zp, qmin, qmax)

    @torch.no_grad()
    def quantize_int(self, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Integer codes (w.shape, int32) and params; ``dequantize_int`` reproduces the forward exactly."""
        x2d = self.view2d(w)
        scale = self.scale.detach()
        if self.sign_mode:
            codes = (x2d >= 0).to(torch.int32)  # 1 -> +scale, 0 -> -scale
        else:
            qmin, qmax = self.qrange()
            codes = torch.clamp(torch.round(x2d * (1.0 / scale)) + self.zero_point, qmin, qmax).to(torch.int32)
        qmin, qmax = self.qrange() if not self.sign_mode else (0.0, 1.0)
        qmin, qmax = torch.as_tensor(qmin), torch.as_tensor(qmax)
        params = {"scheme": "sign" if self.sign_mode else "uniform", "scale": scale.clone(),
                  "zero_point": self.zero_point.clone(), "qmin": qmin, "qmax": qmax,
                  "bits": self.row_bits.clone() if self.row_bits is not None else self.cfg.bits,
                  "granularity": self.cfg.granularity, "group_size": self.cfg.group_size}
        return self.unview(codes, w), params

    def dequantize_int(self, codes: torch.Tensor, params: dict) -> torch.Tensor:
        c2d = self.view2d(codes).float()
        if params["scheme"] == "sign":
            out = torch.where(c2d > 0, params["scale"], -params["scale"])
        else:
            out = (c2d - params["zero_point"]) * params["scale"]
        return self.unview(out, codes)

    def storage_bits(self) -> tuple[float, float]:
        bits = int(self.row_bits.sum()) / self.row_bits.numel() if self.row_bits is not None else float(self.cfg.bits)
        per_group = 32 + (0 if self.cfg.symmetric else self.cfg.bits)  # fp32 scale (+ zero point)
        return bits, float(self.n_groups * per_group)


def _all_reduce(lo: torch.Tensor, hi: torch.Tensor, observer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """DDP: ranks agree on batch statistics (minmax: MIN/MAX; ema/percentile/mse: average)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lo, hi
    lo, hi = lo.clone(), hi.clone()
    if observer == "minmax":
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    else:
        n = dist.get_world_size()
        dist.all_reduce(lo, op=dist.ReduceOp.SUM)
        dist.all_reduce(hi, op=dist.ReduceOp.SUM)
        lo, hi = lo / n, hi / n
    return lo, hi
