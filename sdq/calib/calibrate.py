"""Calibration of a prepared model: observers see training batches, no gradient step.

>>> calibrate(model, dm.train_dataloader(), n_batches=16)            # ranges fitted, then frozen
>>> calibrate(model, batches, len(batches), learn=True)              # LSQ: steps trained afterwards
>>> each_call(model, batches, {"fc": model.fc}, lambda name, mod, x, out: print(x.shape))  # (N, in)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sdq.quant.prepare import set_phase

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class _Done(Exception):
    """Raised from a hook to end a forward pass early (:func:`watching` ``stop``)."""


@torch.no_grad()
def calibrate(model: nn.Module, loader: Iterable[dict], n_batches: int, learn: bool = False) -> None:
    """Observe activation/weight ranges on ``n_batches`` training batches (no gradient steps)."""
    was_training = model.training
    model.eval()
    set_phase(model, "calibrate")
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        model(**inputs_of(batch))
    set_phase(model, "learn" if learn else "frozen")
    model.train(was_training)


@contextmanager
def watching(layers: dict[str, nn.Module], fn: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
             stop: bool = False) -> Iterator[Callable[[torch.Tensor | None, Callable[[], object]], None]]:
    """Hooks on ``layers`` (name -> module) for the time of the block; yields ``run(mask, forward)``, which
    calls ``forward()`` and, after each call of one of the layers, ``fn(name, module, x, out)`` with its input
    x (N, in) and output out (N, out) on the real tokens ``mask`` (B, T) only (rows of padding excluded where
    the leading dims are (B, T)). With ``stop`` the forward ends once every layer has been called.

    >>> with watching({"fc": model.fc}, lambda name, mod, x, out: print(x.shape)) as run:
    ...     run(batch["attention_mask"], lambda: model(**batch))
    """
    keep: list[torch.Tensor | None] = [None]  # this forward's real tokens (B, T) bool
    seen: set[str] = set()

    def rows(t: torch.Tensor) -> torch.Tensor:  # (..., d) -> (N, d)
        mask = keep[0]
        if mask is not None and tuple(t.shape[:-1]) == tuple(mask.shape):
            t = t[mask]
        return t.reshape(-1, t.shape[-1])

    def hook(name: str):
        def call(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            fn(name, mod, rows(inputs[0]), rows(out))
            seen.add(name)
            if stop and len(seen) == len(layers):
                raise _Done
        return call

    def run(mask: torch.Tensor | None, forward: Callable[[], object]) -> None:
        keep[0] = mask.bool() if mask is not None else None
        seen.clear()
        try:
            forward()
        except _Done:
            pass

    handles = [mod.register_forward_hook(hook(name)) for name, mod in layers.items()]
    try:
        yield run
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def each_call(model: nn.Module, batches: Iterable[dict], layers: dict[str, nn.Module],
              fn: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None]) -> None:
    """Run ``model`` (eval mode) over ``batches``; after each call of a module of ``layers`` (name -> module),
    ``fn(name, module, x, out)`` with its input x (N, in) and output out (N, out) on real tokens only (rows
    of padding excluded where the leading dims are the batch's (B, T))."""
    was_training = model.training
    model.eval()
    try:
        with watching(layers, fn) as run:
            for batch in batches:
                run(batch.get("attention_mask"), lambda b=batch: model(**inputs_of(b)))
    finally:
        model.train(was_training)


def inputs_of(batch: dict) -> dict:
    """The model inputs of a batch (no labels or language tags)."""
    return {k: v for k, v in batch.items() if k in INPUT_KEYS}
