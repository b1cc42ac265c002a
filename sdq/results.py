"""results.json and the per-language table printed at the end of a run.

Layout: ``{task: {split: {lang: metric, ..., "avg": metric}}, "teacher": {...}, "fidelity": {...},
"model": ..., "method": ..., "bits": ...}`` — ``hydra.run.dir=...`` tells a script where to read it.

>>> results = write_results(run_dir, spec, module.results, layer_errors, meta={"method": "sdq"})
>>> print_table(results, spec)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def build_results(spec, stage_results: dict, layer_errors: list, meta: dict) -> dict:
    """The results.json dict from the module's per-split, per-language summaries."""
    task: dict = {}
    teacher: dict = {}
    fidelity: dict = {}
    for split, per_lang in stage_results.items():
        split_name = "dev" if split == "val" else split
        task[split_name] = {lang: round(v["metric"], 4) for lang, v in per_lang.items() if "metric" in v}
        if any("teacher_metric" in v for v in per_lang.values()):
            teacher[split_name] = {lang: round(v["teacher_metric"], 4) for lang, v in per_lang.items()}
            fidelity[split_name] = {
                lang: {"agree": round(v["agree"], 4), "kl": round(v["kl"], 6)} for lang, v in per_lang.items()
            }
    results = {spec.name: task, "metric": spec.metric, **{k: v for k, v in meta.items() if k != "config"}}
    if teacher:
        results["teacher"] = {spec.name: teacher}
        results["fidelity"] = {spec.name: fidelity}
    if layer_errors:
        results["layer_errors"] = layer_errors
    if "config" in meta:
        results["config"] = meta["config"]
    return results


def write_results(run_dir: Path, spec, stage_results: dict, layer_errors: list, meta: dict) -> dict:
    """Build the results dict, write ``run_dir/results.json`` atomically and return it."""
    results = build_results(spec, stage_results, layer_errors, meta)
    save_json(Path(run_dir) / "results.json", results)
    return results


def save_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (tmp file + rename): a crash never leaves half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def print_table(results: dict, spec, split: str = "test") -> None:
    """Languages × (metric, teacher, Δ, agreement, KL) on the test split."""
    per_lang = results.get(spec.name, {}).get(split, {})
    if not per_lang:
        return
    teacher = results.get("teacher", {}).get(spec.name, {}).get(split, {})
    fidelity = results.get("fidelity", {}).get(spec.name, {}).get(split, {})
    title = f"{spec.name} {split} {spec.metric} — {results.get('model')} {results.get('method')} {results.get('bits', '')}"
    table = Table(title=title)
    cols = ["lang", spec.metric] + (["FP teacher", "Δ", "agree %", "KL(T‖S)"] if teacher else [])
    for c in cols:
        table.add_column(c, justify="right")
    for lang, value in per_lang.items():
        row = [lang, f"{value:.2f}"]
        if teacher:
            t, f = teacher.get(lang, float("nan")), fidelity.get(lang, {})
            row += [f"{t:.2f}", f"{value - t:+.2f}", f"{f.get('agree', float('nan')):.2f}", f"{f.get('kl', float('nan')):.4f}"]
        table.add_row(*row, style="bold" if lang == "avg" else None)
    Console(width=120).print(table)
