"""Per-layer quantization error of a student against its full-precision teacher on a fixed batch.

For layer l with teacher output h_l^FP and student output h_l^Q (over the unmasked tokens of the batch):
``rel_l = ||h_l^Q - h_l^FP||_F / ||h_l^FP||_F``, in two flavours:

- carried: the student runs end to end on its own (quantized) activations: error accumulated up to l;
- local: student layer l is fed the teacher's input to layer l: error introduced by layer l alone.
  Teacher layer calls are recorded with a forward pre-hook (``with_kwargs=True``: hidden states,
  the encoder's prepared attention mask, position ids, ...) and replayed verbatim on the student layer,
  so no model code is copied and the v5 call signature/mask format is whatever the encoder used.

The same is reported for the self-attention block outputs (``<layer>.attention`` output[0]); local then
means the student's attention block fed the teacher's layer input.

>>> errs = layer_errors(student, teacher, batch)     # {"layer_carried": [...], "attn_local": [...], ...}
>>> plot_layer_errors({"SDQ W8": errs, "QAT W8": errs_qat}, "errors.png")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from sdq.distill.capture import _first, attention_blocks
from sdq.errors import SdqModelError

KEYS = ("layer_carried", "layer_local", "attn_carried", "attn_local")


def relative_error(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> float:
    """||s - t||_F / ||t||_F over tokens where ``mask`` (B, T) is 1; tensors (B, T, H)."""
    if mask is not None:
        keep = mask.to(torch.bool).reshape(student.shape[:2])
        student, teacher = student[keep], teacher[keep]  # (N, H)
    diff = (student.double() - teacher.double()).norm()
    return float(diff / teacher.double().norm().clamp_min(1e-30))


@contextlib.contextmanager
def _eval_no_grad(*models: nn.Module) -> Iterator[None]:
    modes = [[m.training for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for model, mode in zip(models, modes):
            for m, training in zip(model.modules(), mode):
                m.training = training


def _layers(model: nn.Module, pattern: str | None) -> list[tuple[nn.Module, nn.Module]]:
    """(layer module, attention block) pairs in layer order."""
    modules = dict(model.named_modules())
    pairs = []
    for name, block in attention_blocks(model, pattern):
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        if parent is None:
            raise SdqModelError(f"diagnostics: attention block {name!r} has no parent layer module; "
                                "pass a pattern naming blocks inside encoder layers")
        pairs.append((parent, block))
    return pairs


def _record(model: nn.Module, layers: list[tuple[nn.Module, nn.Module]], batch: Mapping[str, Tensor],
            calls: list | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Run ``model(**batch)``; return (layer outputs, attention outputs); append layer (args, kwargs) to calls."""
    outs: list[Tensor] = []
    attns: list[Tensor] = []
    handles = []
    for layer, block in layers:
        handles.append(layer.register_forward_hook(lambda m, a, o: outs.append(_first(o))))
        handles.append(block.register_forward_hook(lambda m, a, o: attns.append(_first(o))))
        if calls is not None:
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k: calls.append((a, dict(k))), with_kwargs=True))
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    return outs, attns


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def layer_errors(student: nn.Module, teacher: nn.Module, batch: Mapping[str, Tensor],
                 pattern: str | None = None) -> dict[str, list[float]]:
    """Relative errors per layer: keys ``layer_carried``, ``layer_local``, ``attn_carried``, ``attn_local``.

    Runs both models in eval mode under no_grad (training flags restored); ``batch`` holds model
    inputs (``labels`` ignored); ``attention_mask`` (B, T) selects the tokens compared.

    >>> errs = layer_errors(student, teacher, {"input_ids": ids, "attention_mask": am})
    >>> errs["layer_local"][3]     # error introduced by layer 3 alone
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = inputs.get("attention_mask")
    s_layers, t_layers = _layers(student, pattern), _layers(teacher, pattern)
    if len(s_layers) != len(t_layers):
        raise SdqModelError(f"diagnostics: student has {len(s_layers)} layers, teacher {len(t_layers)}; "
                            "compare a student with the teacher it was quantized from")
    to = (lambda d, dev: {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in d.items()})
    calls: list = []
    with _eval_no_grad(student, teacher):
        t_out, t_attn = _record(teacher, t_layers, to(inputs, _device(teacher)), calls)
        s_out, s_attn = _record(student, s_layers, to(inputs, _device(student)))
        loc_out, loc_attn = [], []
        dev = _device(student)
        for (layer, block), (args, kwargs) in zip(s_layers, calls):
            args = tuple(a.to(dev) if isinstance(a, Tensor) else a for a in args)
            seen: list[Tensor] = []
            h = block.register_forward_hook(lambda m, a, o, seen=seen: seen.append(_first(o)))
            try:
                loc_out.append(_first(layer(*args, **to(kwargs, dev))))
            finally:
                h.remove()
            loc_attn.append(seen[0])
    if not (len(t_out) == len(s_out) == len(loc_out) == len(s_layers)):
        raise SdqModelError("diagnostics: each layer must run exactly once per forward; "
                            "got a model that calls its layers a different number of times")
    m = None if mask is None else mask.cpu()
    rel = (lambda a, b: relative_error(a.cpu(), b.cpu(), m))
    return {
        "layer_carried": [rel(s, t) for s, t in zip(s_out, t_out)],
        "layer_local": [rel(s, t) for s, t in zip(loc_out, t_out)],
        "attn_carried": [rel(s, t) for s, t in zip(s_attn, t_attn)],
        "attn_local": [rel(s, t) for s, t in zip(loc_attn, t_attn)],
    }


def draw_layer_errors(ax, errors_by_method: Mapping[str, Mapping[str, Sequence[float]]],
                      kinds: Sequence[str] = KEYS, log: bool = True, colours: Sequence[str] | None = None) -> None:
    """Draw on a matplotlib ``ax``: x = layer, y = relative error; colour = method, style = kind."""
    import matplotlib.pyplot as plt

    styles = {"layer_carried": "-", "layer_local": "--", "attn_carried": "-.", "attn_local": ":"}
    markers = {"layer_carried": "o", "layer_local": "s", "attn_carried": "^", "attn_local": "v"}
    colours = colours or plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, errs) in enumerate(errors_by_method.items()):
        for kind in kinds:
            if kind not in errs:
                continue
            ys = list(errs[kind])
            if log:  # zeros cannot be drawn on a log axis: leave a gap
                ys = [y if y > 0 else float("nan") for y in ys]
            ax.plot(range(len(ys)), ys, linestyle=styles.get(kind, "-"), marker=markers.get(kind, "o"),
                    color=colours[i % len(colours)], label=f"{method} · {kind.replace('_', ' ')}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative error ‖h_Q − h_FP‖ / ‖h_FP‖")
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


def plot_layer_errors(errors_by_method: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                      kinds: Sequence[str] = KEYS, log: bool = True,
                      title: str = "Quantization error per layer (relative to FP teacher)") -> Path:
    """PNG with x = layer, y = relative error, one line per (method, kind); colour = method, style = kind.

    >>> plot_layer_errors({"W8A8": layer_errors(s8, t, b), "W4A8": layer_errors(s4, t, b)}, "err.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    draw_layer_errors(ax, errors_by_method, kinds, log)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
