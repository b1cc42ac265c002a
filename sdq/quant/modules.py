"""Swap-in fake-quantized nn.Linear / nn.Embedding (same parameters, quantizers as submodules).

>>> ql = QuantLinear.from_linear(linear, QuantizerConfig(bits=4, granularity="channel"))
>>> y = ql(x); plain = ql.to_linear()            # plain nn.Linear with the fake-quantized weight
>>> qe = QuantEmbedding.from_embedding(emb, QuantizerConfig(bits=4, granularity="row"))
>>> qe.set_row_bits(bits_per_token)              # mixed precision per token (uniform, row granularity)
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from sdq.errors import SdqConfigError
from sdq.quant.base import QuantizerBase
from sdq.quant.config import QuantizerConfig
from sdq.quant.factory import make_quantizer
from sdq.quant.intdomain import int_domain_linear, int_domain_ok
from sdq.quant.rotation import rotate, supported


def quant_noise(w: torch.Tensor, wq: torch.Tensor, p: float, block: int) -> torch.Tensor:
    """Quant-Noise (Fan et al. 2020): each block of ``block`` consecutive values along the last dim of
    w (R, C) takes its quantized value with probability p, else stays full precision."""
    rows, cols = w.shape
    mask = torch.rand(rows, cols // block, device=w.device) < p  # (R, C/block)
    mask = mask.repeat_interleave(block, dim=1)  # (R, C)
    return torch.where(mask, wq, w)


class _QuantWeightMixin:
    weight_quantizer: QuantizerBase | None
    noise_p: float
    noise_block: int

    def _noisy(self, w: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        if self.training and 0.0 < self.noise_p < 1.0 and self.weight_quantizer is not None:
            return quant_noise(w, wq, self.noise_p, self.noise_block)
        return wq

    def _noise_repr(self) -> str:
        return f", quant_noise_p={self.noise_p}, block={self.noise_block}" if 0 < self.noise_p < 1 else ""


class QuantLinear(_QuantWeightMixin, nn.Linear):
    """nn.Linear with ``weight_quantizer`` and optional input ``act_quantizer``. In eval mode without grad, a
    W8A8-style layer (per-tensor input, symmetric uniform weight) computes in the integer domain
    (:mod:`sdq.quant.intdomain`), bit-identical to its int8 export (:class:`sdq.int8.Int8Linear`).
    With ``act_cfg.rotate`` the stored weight is ``rotate(W)`` and the input is rotated before its quantizer
    (``rotated``: the same product, :mod:`sdq.quant.rotation`); ``folded_weight`` rotates back."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_cfg: QuantizerConfig | None = None, act_cfg: QuantizerConfig | None = None,
                 noise_p: float = 0.0, noise_block: int = 8, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        shape = (out_features, in_features)
        self.weight_quantizer = make_quantizer(weight_cfg, shape, "weight") if weight_cfg else None
        self.act_quantizer = make_quantizer(act_cfg, (in_features,), "act") if act_cfg else None
        self.noise_p, self.noise_block = float(noise_p), int(noise_block)
        self.rotated = bool(act_cfg is not None and act_cfg.rotate)
        if self.rotated and not supported(in_features):
            raise SdqConfigError(f"quant.act.rotate: a Linear with {in_features} input features cannot be rotated "
                                 "(a Hadamard rotation needs 2^k or 12 * 2^k, e.g. 384, 768, 1024, 3072); "
                                 "leave it FP with quant.skip or set quant.act.rotate=false")

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_cfg: QuantizerConfig | None,
                    act_cfg: QuantizerConfig | None = None, noise_p: float = 0.0,
                    noise_block: int = 8) -> QuantLinear:
        """Wrap ``linear``'s own Parameters (shared, not copied) and fit the weight quantizer once."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_cfg, act_cfg,
                  noise_p, noise_block, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        if new.rotated:  # in place: the Parameter stays the one the model (and any optimizer) holds
            with torch.no_grad():
                new.weight.copy_(rotate(new.weight))
        for q in (new.weight_quantizer, new.act_quantizer):  # built on CPU (make_quantizer has no device)
            if q is not None:
                q.to(linear.weight.device)
        if new.weight_quantizer is not None:
            new.weight_quantizer.calibrate_(linear.weight)
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if not self.training and not torch.is_grad_enabled() and int_domain_ok(self):
            return int_domain_linear(self, x)  # what the int8 export computes, bit for bit
        x = self.rotate_input(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        w = self.weight
        if self.weight_quantizer is not None:
            if hasattr(self.weight_quantizer, "observe_input"):  # activation-weighted k-means
                self.weight_quantizer.observe_input(x)
            w = self._noisy(w, self.weight_quantizer(w))
        return TF.linear(x, w, self.bias)

    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> the input in the stored weight's basis (x itself unless ``rotated``)."""
        return rotate(x) if self.rotated else x

    @torch.no_grad()
    def folded_weight(self) -> torch.Tensor:
        """The fake-quantized weight in the input's own basis (rotated back when ``rotated``)."""
        wq = self.weight_quantizer
        w = self.weight.detach().clone() if wq is None or not wq._enabled else wq(self.weight)
        return rotate(w, inverse=True) if self.rotated else w

    def to_linear(self) -> nn.Linear:
        """Plain nn.Linear holding the fake-quantized weight (activation quantization is dropped)."""
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        lin.weight = nn.Parameter(self.folded_weight(), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            lin.bias = self.bias
        return lin.train(self.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._noise_repr()


class QuantEmbedding(_QuantWeightMixin, nn.Embedding):
    """nn.Embedding with a per-row/group/tensor ``weight_quantizer``; only the looked-up rows are
    quantized (cheap for a 250k-row table), except while a per-tensor quantizer (re-)fits."""

    def __init__(self, num_embeddings: int, embedding_dim: int, weight_cfg: QuantizerConfig | None = None,
                 padding_idx: int | None = None, noise_p: float = 0.0, noise_block: int = 8,
                 device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype)
        shape = (num_embeddings, embedding_dim)
        self.weight_quantizer = make_quantizer(weight_cfg, shape, "weight") if weight_cfg else None
        self.noise_p, self.noise_block = float(noise_p), int(noise_block)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, weight_cfg: QuantizerConfig | None, noise_p: float = 0.0,
                       noise_block: int = 8) -> QuantEmbedding:
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("QuantEmbedding does not support max_norm or sparse embeddings")
        new = cls(emb.num_embeddings, emb.embedding_dim, weight_cfg, emb.padding_idx, noise_p, noise_block,
                  device="meta")
        new.weight = emb.weight
        if new.weight_quantizer is not None:
            new.weight_quantizer.to(emb.weight.device)
            new.weight_quantizer.calibrate_(emb.weight)
        new.train(emb.training)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        q = self.weight_quantizer
        if q is None or not q._enabled:
            return super().forward(ids)
        if q.cfg.granularity == "tensor" and q._needs_fit(self.weight):  # a per-tensor fit needs the whole table
            return TF.embedding(ids, self._noisy(self.weight, q(self.weight)), self.padding_idx)
        uniq, inv = torch.unique(ids, return_inverse=True)  # (U,), ids.shape
        rows = self.weight[uniq]  # (U, H)
        if self.padding_idx is not None:
            rows = torch.where((uniq == self.padding_idx)[:, None], rows.detach(), rows)
        return TF.embedding(inv, self._noisy(rows, q(rows, rows=uniq)))

    @torch.no_grad()
    def folded_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        return self.weight.detach().clone() if wq is None or not wq._enabled else wq(self.weight)

    def to_embedding(self) -> nn.Embedding:
        """Plain nn.Embedding holding the fake-quantized table."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx,
                           device=self.weight.device, dtype=self.weight.dtype)
        emb.weight = nn.Parameter(self.folded_weight(), requires_grad=self.weight.requires_grad)
        return emb.train(self.training)

    @torch.no_grad()
    def set_row_bits(self, bits: torch.Tensor) -> None:
        """Bits per row (num_embeddings,), e.g. more bits for frequent tokens; re-fits the scales."""
        q = self.weight_quantizer
        if q is None or getattr(q, "row_bits", None) is None or getattr(q, "sign_mode", True):
            raise ValueError("per-row bits need a uniform/lsq embedding quantizer with row/channel/group "
                             "granularity and bits >= 2")
        bits = torch.as_tensor(bits).reshape(-1)
        if bits.numel() != self.num_embeddings or int(bits.min()) < 2 or int(bits.max()) > 8:
            raise ValueError(f"row bits must be {self.num_embeddings} integers in 2..8")
        q.row_bits.copy_(bits.to(q.row_bits))
        q.calibrate_(self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._noise_repr()

