"""Calibration of a prepared model: observers see training batches, no gradient step.

>>> calibrate(model, dm.train_dataloader(), n_batches=16)            # ranges fitted, then frozen
>>> calibrate(model, batches, len(batches), learn=True)              # LSQ: steps trained afterwards
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sdq.quant.prepare import set_phase

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def calibrate(model: nn.Module, loader: Iterable[dict], n_batches: int, learn: bool = False) -> None:
    """Observe activation/weight ranges on ``n_batches`` training batches (no gradient steps)."""
    was_training = model.training
    model.eval()
    set_phase(model, "calibrate")
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        model(**{k: v for k, v in batch.items() if k in INPUT_KEYS})
    set_phase(model, "learn" if learn else "frozen")
    model.train(was_training)
