"""Calibration of a prepared model: observers see training batches, no gradient step.

>>> calibrate(model, dm.train_dataloader(), n_batches=16)            # ranges fitted, then frozen
>>> calibrate(model, batches, len(batches), learn=True)              # LSQ: steps trained afterwards
>>> each_call(model, batches, {"fc": model.fc}, lambda name, mod, x, out: print(x.shape))  # (N, in)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


@torch.no_grad()
def each_call(model: nn.Module, batches: Iterable[dict], layers: dict[str, nn.Module],
              fn: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None]) -> None:
    """Run ``model`` (eval mode) over ``batches``; after each call of a module of ``layers`` (name -> module),
    ``fn(name, module, x, out)`` with its input x (N, in) and output out (N, out) on real tokens only (rows
    of padding excluded where the leading dims are the batch's (B, T))."""
    keep: list[torch.Tensor | None] = [None]  # this batch's real tokens (B, T) bool

    def rows(t: torch.Tensor) -> torch.Tensor:  # (..., d) -> (N, d)
        mask = keep[0]
        if mask is not None and tuple(t.shape[:-1]) == tuple(mask.shape):
            t = t[mask]
        return t.reshape(-1, t.shape[-1])

    def hook(name: str):
        return lambda mod, inputs, out: fn(name, mod, rows(inputs[0]), rows(out))

    was_training = model.training
    model.eval()
    handles = [mod.register_forward_hook(hook(name)) for name, mod in layers.items()]
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            keep[0] = mask.bool() if mask is not None else None
            model(**{k: v for k, v in batch.items() if k in INPUT_KEYS})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
