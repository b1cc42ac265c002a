"""A model's stack of blocks (an encoder's layers) run one block at a time on cached inputs, for calibration
that goes layer by layer without a full forward pass per step (GPTQ's per-block loop). Each block's call
arguments are caught with forward pre-hooks on one real forward pass per batch, as optimum's and AutoGPTQ's
GPTQ do; no model code is copied.

>>> stack = Stack.find(model, names)            # the ModuleList of blocks holding most of the named layers
>>> caught = stack.catch(model, batches)        # block 0's input per batch, and each block's other arguments
>>> out = caught.run(3, b)                      # block 3 on batch b's cached input: its hidden states (B, T, d)
>>> caught.advance(3)                           # block 3's outputs become the cached inputs of block 4
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from sdq.calib.calibrate import inputs_of


class _Stop(Exception):
    """Ends the catching pass after the last block's arguments are known."""


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _without_hidden(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments with the hidden states left out (kept once per batch, not once per block)."""
    return ((None, *args[1:]), kwargs) if args else (args, {k: v for k, v in kwargs.items() if k != "hidden_states"})


def _call(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """block(hidden, *args[1:], **kwargs), its hidden states out (a tuple's first item)."""
    out = block(hidden, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": hidden})
    return out[0] if isinstance(out, tuple) else out


@dataclass
class Caught:
    """What :meth:`Stack.catch` caught: the current block's input hidden states per batch (each (B, T, d)),
    every block's call arguments per batch, and the batches' real-token masks (B, T)."""

    blocks: nn.ModuleList
    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]  # [block][batch] -> (args, kwargs) as passed, hidden states left out
    masks: list[torch.Tensor | None] = field(default_factory=list)

    @torch.no_grad()
    def run(self, i: int, b: int) -> torch.Tensor:
        """Block i on batch b's cached input (block i's input must be the cached one: see :meth:`advance`)."""
        args, kwargs = self.calls[i][b]
        return _call(self.blocks[i], self.hidden[b], args, kwargs)

    @torch.no_grad()
    def advance(self, i: int) -> None:
        """Block i's outputs, on the cached inputs, become the cached inputs (of block i + 1)."""
        self.hidden = [self.run(i, b) for b in range(len(self.hidden))]


@dataclass
class Stack:
    """The ModuleList ``prefix`` of ``model`` whose blocks hold the layers to calibrate."""

    prefix: str
    blocks: nn.ModuleList

    @classmethod
    def find(cls, model: nn.Module, names: Iterable[str]) -> Stack | None:
        """The ModuleList of two or more blocks that holds the most of ``names``; None if none holds any."""
        names, best = list(names), None
        for prefix, mod in model.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) > 1:
                inside = sum(n.startswith(prefix + ".") for n in names)
                if inside and (best is None or inside > best[0]):
                    best = (inside, cls(prefix, mod))
        return best[1] if best else None

    def block_of(self, name: str) -> int | None:
        """The index of the block that holds module ``name``, or None."""
        if not name.startswith(self.prefix + "."):
            return None
        return int(name[len(self.prefix) + 1:].split(".")[0])

    @torch.no_grad()
    def catch(self, model: nn.Module, batches: list[dict]) -> Caught | None:
        """One forward pass per batch in eval mode (``model`` holding this stack or a same-named copy of it;
        left in eval mode: the replayed blocks must run as caught), stopped before the last block runs; None
        where a block's input is not the previous block's output (then the blocks cannot be run one by one)."""
        model.eval()
        blocks = dict(model.named_modules())[self.prefix]
        calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
        first: list[torch.Tensor] = []  # block 0's input per batch
        outs: list[torch.Tensor | None] = [None]
        chained = [True]

        def pre(i: int):
            def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
                if i and (outs[0] is None or not torch.equal(_hidden_of(args, kwargs), outs[0])):
                    chained[0] = False
                if i == 0:
                    first.append(_hidden_of(args, kwargs))
                calls[i].append(_without_hidden(args, kwargs))
                if i == len(blocks) - 1:
                    raise _Stop
            return hook

        def post(mod: nn.Module, args: tuple, out) -> None:
            outs[0] = out[0] if isinstance(out, tuple) else out

        handles = [blk.register_forward_pre_hook(pre(i), with_kwargs=True) for i, blk in enumerate(blocks)]
        handles += [blk.register_forward_hook(post) for blk in blocks]
        try:
            for batch in batches:
                outs[0] = None
                try:
                    model(**inputs_of(batch))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        if not chained[0] or any(len(c) != len(batches) for c in calls):
            return None
        return Caught(blocks, first, calls, [b.get("attention_mask") for b in batches])
