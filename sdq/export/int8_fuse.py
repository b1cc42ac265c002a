"""Two exact fusions of the ``int8`` backend: Q/K/V as one GEMM, GELU in place on its GEMM's output.

- **Q/K/V.** HF's self-attention calls ``query``, ``key`` and ``value`` on the same hidden states. When their
  :class:`~sdq.int8.Int8Linear` quantize the input with the same constants (three observers
  calibrated on the same inputs and fixed after that: PTQ and QAT students of ``w8a8_int8``/``w7a8_int8``;
  learned LSQ steps differ), :meth:`Int8Linear.concat` makes one GEMM over the (3N, K) codes
  that quantizes the input once. Each output element is the same integer sum with the same per-element
  epilogue, so the floats are the student's. :class:`SharedInputPart` modules take the three slots and return
  column views of that output: the first call computes it for the tensor it gets, the other two reuse it
  when they get the same tensor (same object, unchanged; an inference-mode tensor has no version counter,
  so one changed in place between the three calls would go unseen: HF's attention does not do that), else
  they compute afresh.
- **GELU.** ``intermediate_act_fn(dense(x))`` becomes ``dense(x)`` with torch's own GELU (the same kernel)
  applied in place on the GEMM's fresh output, and the activation slot an ``nn.Identity``: no second
  (M, 4H) buffer to allocate and fault in.

Slots are matched by HF's BERT-family names (``query``/``key``/``value`` siblings; a module with ``dense``
and ``intermediate_act_fn``); anything else is left as it is.

>>> n_qkv, n_gelu = fuse_int8(model)     # model: after sdq.export.torch_int8.int8_model swapped its Linears
"""

from __future__ import annotations

import torch
from torch import nn

from sdq.int8 import Int8Linear

QKV = ("query", "key", "value")


class SharedInput(nn.Module):
    """One :class:`Int8Linear` whose output columns are split among sibling slots fed the same tensor."""

    def __init__(self, fused: Int8Linear, sizes: list[int]):
        super().__init__()
        self.fused, self.sizes = fused, list(sizes)
        self._cache: tuple | None = None  # (input, its version, output views, slots served)

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., sizes[index])
        c, version = self._cache, 0 if x.is_inference() else x._version  # inference tensors keep no version
        if c is None or c[0] is not x or c[1] != version or index in c[3]:
            c = (x, version, torch.split(self.fused(x), self.sizes, dim=-1), set())
        c[3].add(index)
        self._cache = None if len(c[3]) == len(self.sizes) else c  # all served: hold nothing
        return c[2][index]

    def __getstate__(self) -> dict:  # copy / pickle without a cached batch
        return {**super().__getstate__(), "_cache": None}


class SharedInputPart(nn.Module):
    """The ``index``-th slot of a :class:`SharedInput` (registered in the parent, not here)."""

    def __init__(self, group: SharedInput, index: int):
        super().__init__()
        self.__dict__["group"] = group  # plain attribute: the parent owns the module once
        self.index, self.in_features = index, group.fused.in_features
        self.out_features = group.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.part(self.index, x)

    def extra_repr(self) -> str:
        return f"part {self.index} of a shared-input int8 GEMM, out_features={self.out_features}"


def gelu_mode(act: nn.Module) -> str | None:
    """``approximate`` of torch's GELU when ``act`` is exactly it (``nn.GELU``, HF's ``GELUActivation``
    calling ``nn.functional.gelu``), else None."""
    if type(act) is nn.GELU:
        return act.approximate
    if type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu:
        return "none"
    return None


def fuse_int8(model: nn.Module) -> tuple[int, int]:
    """Apply both fusions in place; returns (Q/K/V groups fused, GELUs moved into their GEMM)."""
    n_qkv = n_gelu = 0
    for mod in list(model.modules()):
        lins = [getattr(mod, n, None) for n in QKV]
        if all(type(m) is Int8Linear for m in lins):
            fused = Int8Linear.concat(lins)
            if fused is not None:
                mod.qkv_int8 = SharedInput(fused, [m.out_features for m in lins])
                for i, name in enumerate(QKV):
                    setattr(mod, name, SharedInputPart(mod.qkv_int8, i))
                n_qkv += 1
        dense, act = getattr(mod, "dense", None), getattr(mod, "intermediate_act_fn", None)
        mode = gelu_mode(act) if isinstance(act, nn.Module) else None
        if type(dense) is Int8Linear and dense.gelu is None and mode is not None:
            dense.gelu = mode
            mod.intermediate_act_fn = nn.Identity()
            n_gelu += 1
    return n_qkv, n_gelu
