"""Per-language accuracy of an export: every model on the same batches of every language, compared with a
reference (the fake-quantized student it was exported from), and the acceptance verdict.

>>> batches = task_batches(ckpt, split="test")             # {lang: [batch, ...]}: the run's own data settings
>>> res = evaluate_languages({"student": student, "ours": load_quantized(out, backend="onnx")}, batches)
>>> res["ours"]["de"]            # {'metric': 71.2, 'agree': 99.6, 'metric_diff': 0.0, 'max_logit_diff': 0.03, 'n': 501}
>>> v = verdict(res, ours="ours", reference="student", peers=["ort_dynamic"], tol=0.1)
>>> print(format_table(res, reference="student"))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from sdq.errors import SdqConfigError, SdqError
from sdq.lit.evaluation import LanguageAccumulator, aggregate
from sdq.lit.restore import checkpoint_config
from sdq.lit.stage import build_datamodule
from sdq.models import load_tokenizer, resolve_backbone

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
KEEP = (*MODEL_INPUTS, "labels", "group")


def task_batches(ckpt: str | Path | dict, split: str = "test", languages: list[str] | None = None,
                 limit_batches: int | None = None, data_root: str | None = None) -> dict[str, list[dict]]:
    """Evaluation batches per language of the checkpoint's task, built exactly as its run built them
    (``sdq.lit.stage.build_datamodule`` on the stored config: tokenizer, max_length, eval batch size,
    limit_eval, seed); ``split``: ``test`` (every test language) or ``dev`` (the run's dev languages)."""
    if split not in ("test", "dev"):
        raise SdqConfigError(f"split={split!r} is unknown; use split=test or split=dev")
    cfg = checkpoint_config(ckpt)
    if data_root is not None:
        cfg.data.root = data_root
    if languages is not None:
        cfg.data.languages = list(languages)
    dm = build_datamodule(cfg, load_tokenizer(resolve_backbone(cfg.model.name_or_path)))
    langs, loaders = ((dm.test_languages, dm.test_dataloader()) if split == "test"
                      else (dm.val_languages, dm.val_dataloader()))
    return {lang: [{k: b[k] for k in KEEP if k in b} for b in itertools.islice(loader, limit_batches)]
            for lang, loader in zip(langs, loaders, strict=True)}


def model_logits(model: Callable, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """float32 logits of ``model`` (an HF model or an :class:`OrtModel`) on ``batch``'s model inputs."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    return model(**inputs).logits.float()  # (B, C) or (B, T, C)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> float:
    diff = (a - b).abs().amax(-1)  # (B,) or (B, T)
    if diff.dim() == 2 and mask is not None:  # token logits: padding does not count
        diff = diff * mask
    return float(diff.max())


@torch.no_grad()
def evaluate_languages(models: Mapping[str, Callable], batches: Mapping[str, list[dict]], head: str = "seq_cls",
                       metric: str = "acc", label_names: tuple[str, ...] | None = None,
                       reference: str | None = None,
                       on_language: Callable[[str, dict], None] | None = None) -> dict[str, dict[str, dict]]:
    """``{model: {lang: {metric, agree, metric_diff, max_logit_diff, n}, ..., "avg": {...}}}``.

    Each model sees the same batches; the task metric is computed as the training run computes it
    (:class:`~sdq.lit.evaluation.LanguageAccumulator`); ``agree`` (percent of equal predictions),
    ``metric_diff`` (points) and ``max_logit_diff`` are vs ``reference`` (default: the first model).
    ``on_language(lang, {model: figures})`` is called after each language (progress).
    """
    if not models or not batches:
        raise SdqError("evaluate_languages needs at least one model and one language of batches")
    ref = reference if reference is not None else next(iter(models))
    if ref not in models:
        raise SdqError(f"reference {ref!r} is not one of the models ({', '.join(models)})")
    for m in models.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    out: dict[str, dict[str, dict]] = {name: {} for name in models}
    for lang, lang_batches in batches.items():
        accs = {name: LanguageAccumulator(head) for name in models}
        diffs = dict.fromkeys(models, 0.0)
        if not lang_batches:
            raise SdqError(f"language {lang} has no batches; drop it or check the data")
        for b in lang_batches:
            logits = {name: model_logits(m, b) for name, m in models.items()}
            r = logits[ref]
            for name, lg in logits.items():
                if lg.shape != r.shape:
                    raise SdqError(f"{name} logits {tuple(lg.shape)} vs {ref} {tuple(r.shape)}: not the same head")
                accs[name].add(lg, b["labels"], group=b.get("group") if head == "rank" else None, teacher_logits=r)
                diffs[name] = max(diffs[name], _max_abs_diff(lg, r, b.get("attention_mask")))
        for name in models:
            s = accs[name].summary(metric, label_names)
            out[name][lang] = {"metric": s["metric"], "agree": s["agree"], "max_logit_diff": diffs[name],
                               "n": s["n"]}
        for name in models:
            out[name][lang]["metric_diff"] = out[name][lang]["metric"] - out[ref][lang]["metric"]
        if on_language is not None:
            on_language(lang, {name: out[name][lang] for name in models})
    for name in models:
        out[name]["avg"] = aggregate(dict(out[name]))
        out[name]["avg"]["max_logit_diff"] = max(v["max_logit_diff"] for k, v in out[name].items() if k != "avg")
    return out


def verdict(res: Mapping[str, dict], ours: str, reference: str, peers: list[str] = (), tol: float = 0.1) -> dict:
    """The acceptance check: ``ours`` within ``tol`` points of ``reference`` on every language, and an
    average at least each peer's. ``{"ok", "within_tol", "worst_lang", "worst_diff", "beats": {peer: bool}}``."""
    langs = [k for k in res[reference] if k != "avg"]
    diffs = {lang: res[ours][lang]["metric"] - res[reference][lang]["metric"] for lang in langs}
    worst = max(langs, key=lambda k: abs(diffs[k]))
    beats = {p: res[ours]["avg"]["metric"] >= res[p]["avg"]["metric"] for p in peers}
    within = all(abs(d) <= tol + 1e-9 for d in diffs.values())
    return {"ok": within and all(beats.values()), "within_tol": within, "tol": tol, "worst_lang": worst,
            "worst_diff": diffs[worst], "over_tol": [k for k in langs if abs(diffs[k]) > tol + 1e-9],
            "beats": beats}


def format_table(res: Mapping[str, dict], reference: str, metric: str = "acc") -> str:
    """Two per-language tables: each model's metric; then each model vs ``reference`` as
    ``agreement % / metric diff (pt) / max |logit diff|``."""
    names = list(res)
    others = [n for n in names if n != reference]
    langs = list(res[reference])
    w = max(9, *(len(n) for n in names)) + 2
    lines = [f"{metric} per language (same examples for every model)",
             f"{'lang':<5} {'n':>5}" + "".join(f"{n:>{w}}" for n in names)]
    for lang in langs:
        n = res[reference][lang].get("n", "") if lang != "avg" else ""
        lines.append(f"{lang:<5} {n:>5}" + "".join(f"{res[m][lang]['metric']:>{w}.2f}" for m in names))
    cw = max(24, w)  # "100.0 / +0.20 / 0.00662" is 23 characters: cells never touch
    lines += ["", f"vs {reference}: agreement % / {metric} diff (pt) / max |logit diff|",
              f"{'lang':<5}" + "".join(f"{n:>{cw}}" for n in others)]
    for lang in langs:
        cells = (f"{r['agree']:.1f} / {r['metric_diff']:+.2f} / {r['max_logit_diff']:.3g}"
                 for r in (res[m][lang] for m in others))
        lines.append(f"{lang:<5}" + "".join(f"{c:>{cw}}" for c in cells))
    return "\n".join(lines)
