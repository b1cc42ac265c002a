"""Capture logits, self-attention block outputs, attention maps and layer outputs of an HF encoder.

Forward hooks on every self-attention block, found generically (modules whose class name ends with
"Attention" holding a ``self``/``output`` pair, cross-attention excluded; or a ``pattern`` regex on
module names such as ``encoder\\.layer\\.\\d+\\.attention$``). Works for XLM-R/BERT-like models whose
Linear layers were swapped for fake-quantized modules (names are unchanged).

What is recorded per layer l (list index = layer order in ``model.named_modules()``):
- ``attn_outs[l]`` (B, T, H): with ``point="attention"`` (default, SDQ) the attention block output
  ``LayerNorm(x + W_o ctx + b_o)`` = ``<layer>.attention`` output[0], i.e. after the output projection
  and residual LayerNorm (where quantization error shows up and what the next sublayer consumes);
  with ``point="self"`` the raw multi-head context ``ctx`` = ``<layer>.attention.self`` output[0].
- ``attn_probs[l]`` (B, NH, T, T): softmax maps, ``<layer>.attention.self`` output[1]. Only the eager
  attention path materialises them: while attached, an ``*sdpa*`` attention implementation is switched
  to its ``*eager*`` counterpart (``sdpa`` -> ``eager``, ``x_sdpa`` -> ``x_eager`` when registered) and
  restored on detach. Capture teacher and student with the same flags so both use the same kernels.
  In training mode these are the maps after attention dropout (what the eager kernel returns).
- ``hidden[l]`` (B, T, H): output of layer l (the parent module of the attention block); embeddings
  are not included.

Each top-level forward of ``model`` clears the lists first, so a capture holds the last forward only.

>>> with capture(student, attn_out=True) as cap_s:
...     cap_s.logits = student(**batch).logits
>>> cap_t = run_capture(teacher, batch, attn_out=True)          # under no_grad, detached
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sdq.errors import SdqConfigError, SdqModelError

POINTS = ("attention", "self")


@dataclass
class Capture:
    """Tensors of one forward: logits and per-layer lists (index = layer)."""

    logits: Tensor | None = None
    attn_outs: list[Tensor] = field(default_factory=list)  # (B, T, H) each
    attn_probs: list[Tensor] = field(default_factory=list)  # (B, NH, T, T) each
    hidden: list[Tensor] = field(default_factory=list)  # (B, T, H) each

    def clear(self) -> None:
        self.logits = None
        self.attn_outs, self.attn_probs, self.hidden = [], [], []

    def detach(self) -> Capture:
        """A copy with every tensor detached from the autograd graph."""
        d = (lambda t: None if t is None else t.detach())
        return Capture(d(self.logits), [d(t) for t in self.attn_outs], [d(t) for t in self.attn_probs],
                       [d(t) for t in self.hidden])


def _is_attention_block(name: str, module: nn.Module) -> bool:
    return (type(module).__name__.endswith("Attention") and isinstance(getattr(module, "self", None), nn.Module)
            and isinstance(getattr(module, "output", None), nn.Module)
            and "cross" not in name.rsplit(".", 1)[-1].lower() and not getattr(module, "is_cross_attention", False))


def attention_blocks(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Module]]:
    """Self-attention blocks (name, module) in layer order; ``pattern`` is a regex searched in names.

    >>> [n for n, _ in attention_blocks(xlmr)]   # ['roberta.encoder.layer.0.attention', ...]
    """
    if pattern is not None:
        rx = re.compile(pattern)
        found = [(n, m) for n, m in model.named_modules() if n and rx.search(n)]
    else:
        found = [(n, m) for n, m in model.named_modules() if _is_attention_block(n, m)]
    if not found:
        how = f"matching {pattern!r}" if pattern else "(class name *Attention with .self/.output)"
        raise SdqModelError(f"capture: no self-attention block {how} in {type(model).__name__}; "
                            r"pass pattern=r'encoder\.layer\.\d+\.attention$' matching your model's names")
    return found


def _first(out: object) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _top_pretrained(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")),
                None)


def _eager_variant(impl: str | None) -> str | None:
    """The eager counterpart of an sdpa implementation name, or None when no switch is needed/possible."""
    if not impl or "sdpa" not in impl:
        return None
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cand = impl.replace("sdpa", "eager")
    return cand if cand == "eager" or cand in ALL_ATTENTION_FUNCTIONS else None


class capture:  # lower-case: used like a function, ``with capture(model) as cap``
    """Context manager / attach-detach object recording a :class:`Capture` from ``model``'s forwards.

    ``detach_outputs=True`` stores detached tensors (teacher side). After :meth:`detach` no hook or
    reference to the captured tensors remains on the model or in this object.

    >>> hooks = capture(model, attn_out=True, hidden=True); cap = hooks.attach()
    >>> out = model(**batch); cap.logits = out.logits; hooks.detach()
    """

    def __init__(self, model: nn.Module, attn_out: bool = True, attn_prob: bool = False, hidden: bool = False,
                 point: str = "attention", pattern: str | None = None, detach_outputs: bool = False):
        if point not in POINTS:
            raise SdqConfigError(f"capture: point={point!r} unknown; use one of {POINTS}")
        self.model, self.point, self.pattern = model, point, pattern
        self.flags = {"attn_out": attn_out, "attn_prob": attn_prob, "hidden": hidden}
        self.detach_outputs = detach_outputs
        self._handles: list = []
        self._cap: Capture | None = None
        self._restore_impl: tuple[nn.Module, str] | None = None

    def _store(self, bucket: str, value: Tensor | None, where: str) -> None:
        if value is None:
            raise SdqModelError(f"capture: {where} returned no attention probabilities; load the model with "
                                "attn_implementation='eager' (or an sdpa one) to capture attn_prob")
        if self._cap is not None:
            getattr(self._cap, bucket).append(value.detach() if self.detach_outputs else value)

    def _clear(self, module: nn.Module, args: tuple) -> None:
        if self._cap is not None:
            self._cap.clear()

    def attach(self) -> Capture:
        """Register the hooks and return the (live) :class:`Capture` they fill."""
        if self._handles:
            raise SdqConfigError("capture: already attached; call detach() first")
        blocks = attention_blocks(self.model, self.pattern)
        modules = dict(self.model.named_modules())
        self._cap = Capture()
        self._handles.append(self.model.register_forward_pre_hook(self._clear))
        for name, block in blocks:
            if self.flags["attn_out"]:
                src = block if self.point == "attention" else block.self
                self._handles.append(src.register_forward_hook(
                    lambda m, a, o: self._store("attn_outs", _first(o), "attention")))
            if self.flags["attn_prob"]:
                self._handles.append(block.self.register_forward_hook(
                    lambda m, a, o, n=name: self._store("attn_probs", o[1] if isinstance(o, tuple) else None, n)))
            if self.flags["hidden"]:
                layer = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
                if layer is None:
                    self.detach()
                    raise SdqModelError(f"capture: attention block {name!r} has no parent layer module; "
                                        "use hidden=False or a pattern naming blocks inside layers")
                self._handles.append(layer.register_forward_hook(
                    lambda m, a, o: self._store("hidden", _first(o), "layer")))
        if self.flags["attn_prob"]:
            top = _top_pretrained(self.model)
            impl = getattr(getattr(top, "config", None), "_attn_implementation", None)
            eager = _eager_variant(impl)
            if top is not None and eager is not None:
                top.set_attn_implementation(eager)
                self._restore_impl = (top, impl)
        return self._cap

    def detach(self) -> None:
        """Remove every hook, restore the attention implementation and drop the capture reference."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._restore_impl is not None:
            top, impl = self._restore_impl
            top.set_attn_implementation(impl)
            self._restore_impl = None
        self._cap = None

    def __enter__(self) -> Capture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def run_capture(model: nn.Module, batch: Mapping[str, Tensor], attn_out: bool = True, attn_prob: bool = False,
                hidden: bool = False, point: str = "attention", pattern: str | None = None,
                grad: bool = False) -> Capture:
    """Run ``model(**batch)`` (labels dropped) and return its :class:`Capture` with logits.

    ``grad=False`` (teacher): runs under ``torch.no_grad`` and stores detached tensors.

    >>> cap_t = run_capture(teacher, batch, **crit.capture_kwargs)
    >>> cap_s = run_capture(student, batch, **crit.capture_kwargs, grad=True)
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with capture(model, attn_out, attn_prob, hidden, point, pattern, detach_outputs=not grad) as cap:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out = model(**inputs)
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)):
            logits = out[0]
        cap.logits = logits if grad else (None if logits is None else logits.detach())
    return cap
