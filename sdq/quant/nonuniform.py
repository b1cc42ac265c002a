"""Non-uniform weight quantizers: k-means codebooks and binary codes (w ~ sum_i alpha_i b_i).

Both fit per group (tensor / channel=row / group) in the calibrate phase (prepare fits once), and every
``refit_every`` training steps when > 0; forward is nearest codebook value, backward identity (STE).

>>> q = KMeansQuantizer(QuantizerConfig(bits=4, scheme="kmeans", granularity="channel"), (16, 32))
>>> y = q(w); codes, params = q.quantize_int(w)          # params["codebook"]: (G, 16)
>>> b = BinaryCodeQuantizer(QuantizerConfig(bits=2, scheme="binary", granularity="row"), (100, 32))
>>> codes, params = b.quantize_int(w)  # w_hat[g, j] = sum_i alpha[g, i] * (2 * ((codes >> i) & 1) - 1)
"""

from __future__ import annotations

import torch

from sdq.quant import functional as F
from sdq.quant.base import QuantizerBase, chunks
from sdq.quant.config import QuantizerConfig


class _CodebookQuantizer(QuantizerBase):
    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        if kind != "weight":
            raise ValueError(f"scheme={cfg.scheme} quantizes weights only (got kind={kind!r})")
        super().__init__(cfg, shape, kind)

    def codebook(self, gidx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sorted codebook (G', K) and, for binary codes, the sign-pattern index of each entry."""
        raise NotImplementedError

    def _fit_groups(self, x2d: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _fit_weights(self, gidx: torch.Tensor | None) -> torch.Tensor | None:
        """Per-value weights (G', n) for the fit, or None (every value counts the same)."""
        return None

    def _fit(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> None:
        x2d, w = x2d.float(), self._fit_weights(gidx)
        out = torch.cat([self._fit_groups(x2d[s], None if w is None else w[s])
                         for s in chunks(x2d.shape[0], x2d.shape[1])], 0)
        self.put_(self.params, gidx, out)

    @property
    def params(self) -> torch.Tensor:
        raise NotImplementedError

    def _quantize(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> torch.Tensor:
        vals, _ = self.codebook(gidx)
        vals = vals.to(x2d.dtype)
        q = vals.gather(1, F.nearest_code(x2d.detach(), vals))
        return F.pass_through(x2d, q)

    @torch.no_grad()
    def quantize_int(self, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x2d = self.view2d(w).float()
        vals, order = self.codebook()
        idx = F.nearest_code(x2d, vals)
        if order is not None:  # binary: the sign pattern (bit i set -> b_i = +1)
            return self.unview(order.gather(1, idx).to(torch.int32), w), {
                "scheme": "binary", "alpha": self.alpha.clone(), "granularity": self.cfg.granularity,
                "group_size": self.cfg.group_size}
        return self.unview(idx.to(torch.int32), w), {
            "scheme": "kmeans", "codebook": vals.clone(), "granularity": self.cfg.granularity,
            "group_size": self.cfg.group_size}

    def dequantize_int(self, codes: torch.Tensor, params: dict) -> torch.Tensor:
        c2d = self.view2d(codes).long()
        if params["scheme"] == "binary":
            signs = F.binary_signs(params["alpha"].shape[1], c2d.device)  # (2^B, B)
            table = params["alpha"] @ signs.t()  # (G, 2^B) unsorted, indexed by pattern
            return self.unview(table.gather(1, c2d), codes)
        return self.unview(params["codebook"].gather(1, c2d), codes)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.n_groups}"


class KMeansQuantizer(_CodebookQuantizer):
    """Codebook of 2^bits centroids per group (buffer ``codebook`` (G, K), sorted), Lloyd with
    deterministic ``kmeans_init`` (quantile | linear) and ``kmeans_iters`` iterations.

    ``kmeans_weighting=act``: buffers ``in_sq`` (C,) and ``in_count`` accumulate the squared inputs of
    the Linear in the calibrate phase (``observe_input``); each weight column then counts in the
    centroid means with its mean squared input, so the fit minimises the layer's output error."""

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        super().__init__(cfg, shape, kind)
        k = cfg.levels
        self.register_buffer("codebook_", torch.linspace(-1, 1, k).repeat(self.n_groups, 1))
        self.fits_on_data = cfg.kmeans_weighting == "act"
        self._fitted_count = 0.0  # inputs seen at the last weighted fit (host)
        if self.fits_on_data:
            self.register_buffer("in_sq", torch.zeros(self.shape[-1]))
            self.register_buffer("in_count", torch.zeros(()))

    @property
    def params(self) -> torch.Tensor:
        return self.codebook_

    def codebook(self, gidx=None):
        return self.take(self.codebook_, gidx), None

    @torch.no_grad()
    def observe_input(self, x: torch.Tensor) -> None:
        """Accumulate E[x_j^2] per input feature j from Linear inputs x (..., C) (calibrate phase only)."""
        if not self.fits_on_data or self._phase != 0 or not self._enabled:
            return
        x2 = x.detach().float().reshape(-1, x.shape[-1])  # (N, C)
        self.in_sq += x2.pow(2).sum(0)
        self.in_count += x2.shape[0]

    def _fit_weights(self, gidx: torch.Tensor | None) -> torch.Tensor | None:
        """Mean squared input of each value's column in the grouped layout (G', n); None for plain
        k-means or before any input was seen."""
        if not self.fits_on_data:
            return None
        self._fitted_count = float(self.in_count)
        if self._fitted_count == 0:
            return None
        imp = self.in_sq / self.in_count  # (C,)
        imp = imp.clamp_min(1e-6 * float(imp.mean()) + 1e-12)  # dead inputs keep a tiny weight
        return self.take(self.view2d(imp.expand(self.shape)), gidx)

    def _needs_fit(self, x: torch.Tensor) -> bool:
        """Weighted k-means in the calibrate phase: re-fit each time the inputs seen have doubled (1, 2,
        4, ... batches); ``set_phase`` out of calibrate does the final fit on all of them."""
        if self.fits_on_data and self._phase == 0 and self._initialized:
            return float(self.in_count) >= 2 * max(self._fitted_count, 0.5)
        return super()._needs_fit(x)

    def _fit_groups(self, x2d: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return F.kmeans_fit(x2d, self.cfg.levels, self.cfg.kmeans_iters, self.cfg.kmeans_init, weight)

    def storage_bits(self) -> tuple[float, float]:
        return float(self.cfg.bits), float(self.n_groups * self.cfg.levels * 32)

    def extra_repr(self) -> str:
        w = self.cfg.kmeans_weighting
        return super().extra_repr() + (f", weighting={w}" if w != "none" else "")


class BinaryCodeQuantizer(_CodebookQuantizer):
    """``bits`` binary codes per group: buffer ``alpha`` (G, B); greedy init then ``binary_iters``
    alternating rounds (least-squares alpha, optimal re-pick of b), Chung et al. 2020 / Xu et al. 2018."""

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        super().__init__(cfg, shape, kind)
        self.register_buffer("alpha", torch.ones(self.n_groups, cfg.bits) * 2.0 ** -torch.arange(cfg.bits))

    @property
    def params(self) -> torch.Tensor:
        return self.alpha

    def codebook(self, gidx=None):
        return F.binary_codebook(self.take(self.alpha, gidx))

    def _fit_groups(self, x2d: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return F.binary_fit(x2d, self.cfg.bits, self.cfg.binary_iters)  # weight: always None here

    def storage_bits(self) -> tuple[float, float]:
        return float(self.cfg.bits), float(self.n_groups * self.cfg.bits * 32)

