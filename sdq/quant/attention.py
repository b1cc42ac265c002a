"""Attention internals (Q, K, V, softmax probabilities) through transformers' attention-function registry.

``attach_attention_quantizers`` puts an :class:`AttentionQuantizer` on each attention module as
``module.sdq_attn`` (so its observers are in the state_dict) and switches the model to the registered
implementation ``sdq_quant_sdpa`` / ``sdq_quant_eager``. The registered function receives the attention
module as its ``module`` argument, finds ``module.sdq_attn`` there, fake-quantizes Q/K/V and computes
softmax(QK^T * scaling + mask) with quantized probabilities; with quantization disabled it calls the
original sdpa/eager function unchanged (bit-exact FP).

>>> attach_attention_quantizers(model, QuantizerConfig(bits=8, symmetric=False))
>>> detach_attention_quantizers(model)     # restores the original implementation
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import torch
from torch import nn

from sdq.errors import SdqModelError
from sdq.quant.config import QuantizerConfig
from sdq.quant.uniform import UniformQuantizer

IMPL_PREFIX = "sdq_quant_"
BASES = ("sdpa", "eager")


class AttentionQuantizer(nn.Module):
    """Per-layer activation quantizers ``q``, ``k``, ``v`` and ``probs`` (probs always asymmetric)."""

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.q = UniformQuantizer(cfg, (1,), "act")
        self.k = UniformQuantizer(cfg, (1,), "act")
        self.v = UniformQuantizer(cfg, (1,), "act")
        self.probs = UniformQuantizer(cfg.replace(symmetric=False), (1,), "act")

    @property
    def active(self) -> bool:
        return self.q._enabled


def _generic_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   probs_quantizer: UniformQuantizer | None = None, **kwargs):
    """softmax(Q K^T * scaling + mask) V on (B, heads, T, D); bool masks (True = keep) or additive."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped KV heads
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, h, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1)
    if probs_quantizer is not None:
        probs = probs_quantizer(probs)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, T, h, D)
    return out, probs


def _base_function(base: str, module: nn.Module) -> Callable:
    from transformers import AttentionInterface  # lazy: heavy, only HF attention modules need it

    if base == "sdpa":
        return AttentionInterface._global_mapping["sdpa"]
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return own if own is not None else _generic_eager


def _make_impl(base: str) -> Callable:
    def sdq_quant_attention(module, query, key, value, attention_mask, *args, **kwargs):
        aq = getattr(module, "sdq_attn", None)
        if aq is None or not aq.active:
            return _base_function(base, module)(module, query, key, value, attention_mask, *args, **kwargs)
        if args:  # positional order of dropout/scaling differs between sdpa and eager
            raise TypeError("sdq_quant attention expects dropout/scaling as keyword arguments")
        kwargs = {k: v for k, v in kwargs.items() if k in ("dropout", "scaling")}
        return _generic_eager(module, aq.q(query), aq.k(key), aq.v(value), attention_mask,
                              probs_quantizer=aq.probs, **kwargs)

    sdq_quant_attention.__name__ = f"sdq_quant_{base}_attention"
    return sdq_quant_attention


def register() -> None:
    """Register ``sdq_quant_sdpa`` / ``sdq_quant_eager`` (attention function + matching mask function)."""
    from transformers import AttentionInterface  # lazy: heavy, only HF attention modules need it
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask  # lazy: as above

    for base, mask in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        if IMPL_PREFIX + base not in AttentionInterface._global_mapping:
            AttentionInterface.register(IMPL_PREFIX + base, _make_impl(base))
            AttentionMaskInterface.register(IMPL_PREFIX + base, mask)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """HF attention modules that dispatch through the registry (have ``config``, ``scaling``, ``is_causal``)."""
    return [(n, m) for n, m in model.named_modules()
            if hasattr(m, "config") and hasattr(m, "scaling") and hasattr(m, "is_causal")]


def _set_impl(model: nn.Module, impl: str) -> None:
    from transformers import PreTrainedModel  # lazy: heavy, only HF models need it

    tops = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    for m in tops[:1]:
        m.set_attn_implementation(impl)
    for _, m in attention_modules(model):  # modules outside a PreTrainedModel / unshared configs
        if m.config._attn_implementation != impl:
            m.config._attn_implementation = impl


def attach_attention_quantizers(model: nn.Module, cfg: QuantizerConfig, skip: list[str] = ()) -> int:
    """Add ``sdq_attn`` to every non-skipped attention module and switch the implementation; returns count."""
    mods = [(n, m) for n, m in attention_modules(model) if not any(re.search(p, n) for p in skip)]
    if not mods:
        return 0
    impl = mods[0][1].config._attn_implementation or "eager"
    base = impl.removeprefix(IMPL_PREFIX)
    if base not in BASES:
        raise SdqModelError(f"attention quantization needs attn_implementation sdpa or eager (model uses "
                            f"{impl!r}); load the model with attn_implementation='sdpa'")
    register()
    for _, m in mods:
        m.sdq_attn = AttentionQuantizer(cfg).to(next(m.parameters()).device).train(m.training)
    _set_impl(model, IMPL_PREFIX + base)
    return len(mods)


def detach_attention_quantizers(model: nn.Module) -> None:
    """Remove ``sdq_attn`` modules and restore the original (sdpa/eager) implementation."""
    mods = attention_modules(model)
    for _, m in mods:
        if hasattr(m, "sdq_attn"):
            del m.sdq_attn
    if mods:
        impl = mods[0][1].config._attn_implementation or ""
        if impl.startswith(IMPL_PREFIX):
            _set_impl(model, impl[len(IMPL_PREFIX):])
