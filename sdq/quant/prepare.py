"""Model-level API: swap in fake-quantized modules, switch phases, turn quantization off, strip it again.

>>> report = prepare(model, QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"}}))
>>> set_phase(model, "calibrate"); model(**batch); set_phase(model, "frozen")
>>> set_enabled(model, False)      # exact FP forward
>>> plain = strip(model)           # nn.Linear / nn.Embedding with fake-quantized weights folded in
"""

from __future__ import annotations

import re

import torch
from torch import nn

from sdq.errors import SdqConfigError
from sdq.quant.attention import attach_attention_quantizers, detach_attention_quantizers
from sdq.quant.base import PHASES, QuantizerBase
from sdq.quant.config import QuantConfig, QuantizerConfig
from sdq.quant.modules import QuantEmbedding, QuantLinear
from sdq.quant.report import QuantReport, quant_report
from sdq.quant.token_bits import attach_token_bits


def _check_shape(name: str, cfg: QuantizerConfig, rows: int, cols: int, what: str, qcfg: QuantConfig) -> None:
    """Module-dependent checks: group size divides the dim, k-means has enough values per group."""
    if cfg.granularity == "group" and cols % cfg.group_size:
        divs = [d for d in (8, 16, 32, 64, 128) if cols % d == 0]
        raise SdqConfigError(f"group_size={cfg.group_size} does not divide {name}.{what}={cols}; "
                             f"use a divisor of {cols}" + (f" (e.g. {divs[-1]})" if divs else ""))
    per_group = {"tensor": rows * cols, "group": cfg.group_size}.get(cfg.granularity, cols)
    if cfg.scheme == "kmeans" and cfg.levels > per_group:
        raise SdqConfigError(f"k-means at {cfg.bits} bits needs {cfg.levels} centroids but {name} has only "
                             f"{per_group} values per {cfg.granularity}; lower bits or use granularity=tensor")
    if 0 < qcfg.quant_noise_p < 1 and cols % qcfg.quant_noise_block:
        raise SdqConfigError(f"quant_noise_block={qcfg.quant_noise_block} does not divide {name}.{what}="
                             f"{cols}; choose a divisor of {cols}")


def prepare(model: nn.Module, cfg: QuantConfig) -> QuantReport:
    """Swap nn.Linear -> QuantLinear and nn.Embedding -> QuantEmbedding in place (skip list, overrides),
    attach attention quantizers when ``cfg.attention`` is set; weight quantizers are fitted once.

    Module-dependent config errors (group size, k-means centroids, noise block) raise SdqConfigError
    before anything is changed. Returns the :class:`QuantReport`.
    """
    cfg.validate()
    plan: list[tuple[str, nn.Module, QuantizerConfig | None]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear | QuantEmbedding):
            raise SdqConfigError(f"{name or 'model'} is already quantized; call prepare once on a fresh model "
                                 "(or strip() it first)")
        if isinstance(mod, nn.Linear):
            wcfg = cfg.weight_config(name, cfg.weight)
            if wcfg is not None:
                _check_shape(name, wcfg, mod.out_features, mod.in_features, "in_features", cfg)
            if wcfg is not None or (cfg.act is not None and not cfg.skipped(name)):
                plan.append((name, mod, wcfg))
        elif isinstance(mod, nn.Embedding):
            ecfg = cfg.weight_config(name, cfg.embedding)
            if ecfg is not None:
                _check_shape(name, ecfg, mod.num_embeddings, mod.embedding_dim, "embedding_dim", cfg)
                plan.append((name, mod, ecfg))
    for name, mod, wcfg in plan:
        if isinstance(mod, nn.Linear):
            new = QuantLinear.from_linear(mod, wcfg, cfg.act, cfg.quant_noise_p, cfg.quant_noise_block)
        else:
            new = QuantEmbedding.from_embedding(mod, wcfg, cfg.quant_noise_p, cfg.quant_noise_block)
        _set_submodule(model, name, new)
    if cfg.attention is not None:
        attach_attention_quantizers(model, cfg.attention, cfg.skip)
    if cfg.token_bits is not None:  # per-row bit buffers; bits by frequency: token_bits.assign_token_bits
        attach_token_bits(model, cfg.token_bits)
    return quant_report(model)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantizers(model: nn.Module) -> list[tuple[str, QuantizerBase]]:
    """All quantizer modules of a prepared model with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizerBase)]


def set_phase(model: nn.Module, phase: str, pattern: str | None = None) -> None:
    """``calibrate``: observers update ranges/codebooks from data (weights and activations);
    ``frozen``: fixed params; ``learn``: LSQ steps get gradients, observers frozen.
    ``pattern``: only quantizers whose name matches this regex (e.g. ``act_quantizer``)."""
    if phase not in PHASES:
        raise SdqConfigError(f"quant phase {phase!r} is unknown; choose one of: {', '.join(PHASES)}")
    for name, m in model.named_modules():  # leaving calibrate: input-weighted weight fits on all inputs seen
        q = getattr(m, "weight_quantizer", None)
        if (isinstance(m, QuantLinear) and getattr(q, "fits_on_data", False) and q._phase == 0 and phase != "calibrate"
                and (pattern is None or re.search(pattern, f"{name}.weight_quantizer"))):
            q.calibrate_(m.weight)
    for name, q in quantizers(model):
        if pattern is None or re.search(pattern, name):
            q.set_phase(phase)


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Turn all fake quantization on/off (off: forward equals the FP model exactly; rotated layers up to float
    rounding)."""
    for _, q in quantizers(model):
        q.set_enabled(enabled)


@torch.no_grad()
def strip(model: nn.Module) -> nn.Module:
    """Replace QuantLinear/QuantEmbedding by plain modules holding the fake-quantized weights and restore
    the original attention implementation (activation and attention fake-quant are dropped)."""
    swaps = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantEmbedding)]
    for name, mod in swaps:
        plain = mod.to_linear() if isinstance(mod, QuantLinear) else mod.to_embedding()
        _set_submodule(model, name, plain)
    detach_attention_quantizers(model)
    return model
