"""Empirical bias correction (Nagel et al., ICCV 2019; NNCF's fast bias correction): quantization shifts
the mean of a Linear's outputs; each quantized Linear's bias absorbs that shift, measured on the
calibration batches after the ranges are frozen.

For a QuantLinear with input x (the float input it receives in the calibrated student), the shift of output
channel j is the mean over real tokens of ``(x W^T)_j - (q(x) q(W)^T)_j``; ``bias += shift``. Each layer's
shift is measured on its own inputs, so one pass corrects every layer (the correction is local: it does not
chase errors coming from the layers below).

>>> calibrate(student, batches, len(batches))        # ranges first
>>> n = correct_bias(student, batches)               # then every quantized Linear's bias, one more pass
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as TF
from torch import nn

from sdq.calib.calibrate import each_call
from sdq.quant.modules import QuantLinear


def _quantized(mod: nn.Module) -> bool:
    return isinstance(mod, QuantLinear) and mod.bias is not None and any(
        q is not None and q._enabled for q in (mod.weight_quantizer, mod.act_quantizer))


@torch.no_grad()
def correct_bias(model: nn.Module, batches: Iterable[dict], skip: Iterable[str] = ()) -> int:
    """Add to the bias of every quantized Linear (with a bias, not named in ``skip``) the mean output shift
    its weight and input quantization cause on ``batches`` (padding tokens excluded); returns how many
    biases changed."""
    skip = set(skip)
    layers = {name: mod for name, mod in model.named_modules() if _quantized(mod) and name not in skip}
    if not layers:
        return 0
    sums = {name: torch.zeros(mod.out_features, dtype=torch.float64) for name, mod in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def add(name: str, mod: QuantLinear, x: torch.Tensor, out: torch.Tensor) -> None:
        shift = TF.linear(mod.rotate_input(x), mod.weight) + mod.bias - out  # (N, out); x: before act quant
        sums[name] += shift.double().sum(0).cpu()
        counts[name] += shift.shape[0]

    each_call(model, batches, layers, add)
    for name, mod in layers.items():  # applied after the pass: every shift measured on the same student
        if counts[name]:
            mod.bias.add_((sums[name] / counts[name]).to(mod.bias))
    return sum(1 for c in counts.values() if c)
