"""Read a prepared (fake-quantized) student: integer codes + params of every quantized weight, the
activation quantization of every Linear input, and the plain model holding the effective weights.

The student is not modified (a deep copy is stripped). Every packed weight is checked to dequantize
bit-exactly to the weight the fake-quantized forward uses. A Linear whose input is rotated
(``quant.act.rotate``) is packed in the rotated basis, as its forward uses it (the packed meta says
``"rotated": true``); the plain model holds it rotated back (``folded_weight``).

>>> col = collect(student)
>>> col.plain          # plain HF model (strip()), col.tensors["roberta...query.weight"] -> (meta, arrays)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sdq.errors import SdqError
from sdq.export.pack import dequantize, pack_tensor
from sdq.quant import QuantEmbedding, QuantLinear, strip
from sdq.quant.per_token import PerTokenQuantizer


@dataclass
class Collected:
    plain: nn.Module
    tensors: dict[str, tuple[dict, dict[str, np.ndarray]]] = field(default_factory=dict)  # param -> packed
    acts: dict[str, dict] = field(default_factory=dict)  # Linear module -> activation quant params
    attention_quantized: bool = False


def act_params(q: nn.Module, rotated: bool = False) -> dict | None:
    """A Linear's input quantization as plain numbers (None when disabled): static per-tensor/channel
    ``scale``/``zero_point``, or ``granularity="token"`` (dynamic min-max per token, ``symmetric``, no
    stored params); ``rotate``: the input is rotated first (:func:`sdq.quant.rotation.rotate`)."""
    if q is None or not bool(q.enabled):
        return None
    qmin, qmax = q.qrange()
    out = {"qmin": int(qmin), "qmax": int(qmax), "granularity": q.cfg.granularity, "bits": int(q.cfg.bits),
           "rotate": bool(rotated)}
    if isinstance(q, PerTokenQuantizer):
        return out | {"symmetric": bool(q.cfg.symmetric)}
    return out | {"scale": q.scale.detach().float().reshape(-1).tolist(),
                  "zero_point": q.zero_point.detach().float().reshape(-1).tolist()}


@torch.no_grad()
def collect(student: nn.Module) -> Collected:
    """Codes/params of every enabled weight quantizer and the stripped plain model (SdqError if the
    model has no sdq quantizers or a packed weight does not reproduce the fake-quantized one)."""
    model = copy.deepcopy(student).cpu().float().eval()
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantEmbedding)]
    if not mods:
        raise SdqError("model has no sdq quantizers; export_quantized needs a prepared student "
                       "(sdq.quant.prepare) or a checkpoint of a quantized run")
    out = Collected(plain=model)
    rotated: dict[str, torch.Tensor] = {}  # packed key -> the fake-quantized weight in the rotated basis
    for name, mod in mods:
        wq = mod.weight_quantizer
        has_wq = wq is not None and bool(wq.enabled)
        if getattr(mod, "rotated", False) and not has_wq:
            raise SdqError(f"export: {name} rotates its input but keeps its weight FP (quant.weight is null); "
                           "the export packs rotated weights only as codes: quantize the weights or set "
                           "quant.act.rotate=false")
        if has_wq:
            if wq.phase_name == "calibrate":  # what its forward would do first: fit the full weight
                wq.calibrate_(mod.weight)
                wq.set_phase("frozen")
            codes, params = wq.quantize_int(mod.weight.detach())
            out.tensors[f"{name}.weight"] = pack_tensor(f"{name}.weight", codes, params)
            if getattr(mod, "rotated", False):
                out.tensors[f"{name}.weight"][0]["rotated"] = True
                rotated[f"{name}.weight"] = wq(mod.weight)
        if isinstance(mod, QuantLinear):
            a = act_params(mod.act_quantizer, mod.rotated)
            if a is not None:
                out.acts[name] = a
    out.attention_quantized = any(getattr(m, "sdq_attn", None) is not None for m in model.modules())
    out.plain = strip(model)  # effective (fake-quantized) weights folded in (rotated ones rotated back)
    state = out.plain.state_dict()
    for key, (meta, arrays) in out.tensors.items():
        back, effective = dequantize(meta, arrays, key), rotated.get(key, state[key])
        if not torch.equal(back, effective.float()):
            err = (back - effective).abs().max().item()
            raise SdqError(f"packed {key} differs from the fake-quantized weight (max {err:.3g}); "
                           "the quantizer's quantize_int/forward disagree, report this as a bug")
    return out
