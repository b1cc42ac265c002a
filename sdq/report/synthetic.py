"""Deterministic, realistic results dicts (results.json schema) and fake sweep dirs, for tests and demos.

The FP teacher scores ``top - step * i`` on the i-th language of the task; a student loses
``drop * (1 + spread * i)`` points there (later = lower-resource languages lose more).

>>> res = fake_results("xnli", method="sdq", bits=4, drop=1.0)
>>> res["xnli"]["test"]["en"], res["teacher"]["xnli"]["test"]["en"]
(79.0, 80.0)
>>> root = write_fake_sweep(tmp_path / "multirun" / "t0", "xnli")   # python eval_xglue.py compare=<root>
"""

from __future__ import annotations

import json
from pathlib import Path

from sdq.data.tasks import get_task

# drop of the English score (points) per method and bits: roughly the shape of the SDQ paper's table
SWEEP_DROPS = {
    "fp_continued": {8: 0.0, 4: 0.0, 2: 0.0},
    "ptq": {8: 0.5, 4: 3.0, 2: 12.0},
    "qat": {8: 0.25, 4: 1.5, 2: 6.0},
    "qat_kd": {8: 0.25, 4: 1.0, 2: 4.0},
    "sdq": {8: 0.0, 4: 0.5, 2: 2.5},
}


def _block(values: dict[str, float]) -> dict[str, float]:
    return {**values, "avg": round(sum(values.values()) / len(values), 4)}


def fake_results(
    task: str,
    model: str = "me5_small",
    method: str = "sdq",
    bits: int | str | None = 8,
    drop: float = 0.0,
    languages: list[str] | None = None,
    top: float = 80.0,
    step: float = 1.5,
    spread: float = 0.1,
    teacher: bool = True,
) -> dict:
    """A results dict with dev/test per language (+ FP teacher and fidelity blocks when ``teacher``)."""
    spec = get_task(task)
    langs = list(languages or spec.languages)
    fp = {lang: round(top - step * i, 4) for i, lang in enumerate(langs)}
    student = {lang: round(fp[lang] - drop * (1 + spread * i), 4) for i, lang in enumerate(langs)}
    res: dict = {
        task: {"dev": _block(student), "test": _block(student)},
        "metric": spec.metric,
        "model": model,
        "task": task,
        "method": method,
        "quant": "w8a8",
        "bits": bits if bits is not None else "w8a8",
        "teacher_ckpt": None,
        "quant_report": None,
    }
    if teacher and method != "fp":
        res["teacher"] = {task: {"dev": _block(fp), "test": _block(fp)}}
        fid = {
            lang: {
                "agree": round(100 - 2 * (fp[lang] - student[lang]), 4),
                "kl": round(0.01 * (fp[lang] - student[lang]), 6),
            }
            for lang in langs
        }
        fid["avg"] = {k: round(sum(v[k] for v in fid.values()) / len(langs), 6) for k in ("agree", "kl")}
        res["fidelity"] = {task: {"dev": fid, "test": fid}}
    res["config"] = {
        "model": {"name": model},
        "task": {"name": task},
        "method": {"name": method, "quantize": method not in ("fp", "fp_continued")},
        "bits": bits,
    }
    return res


def write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def write_fake_sweep(
    root: str | Path, task: str = "xnli", model: str = "me5_small", drops: dict | None = None
) -> Path:
    """A Hydra multirun dir (``bits=B,method=M/results.json``) plus one stage-1 teacher sub-dir."""
    root = Path(root)
    first = True
    for method, per_bits in (drops or SWEEP_DROPS).items():
        for bits, drop in per_bits.items():
            job = root / f"bits={bits},method={method}"
            write_json(job / "results.json", fake_results(task, model, method, bits, drop))
            if first:  # the job that fine-tuned the (cached) FP teacher
                t = fake_results(task, model, "fp", None, 0.0, teacher=False)
                t.update(stage="teacher")
                write_json(job / "teacher" / "results.json", t)
                first = False
    return root
