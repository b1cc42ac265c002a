"""What ``eval_xglue.py`` does: evaluate a checkpoint, report an existing run, or compare runs; gate.

Exactly one of ``ckpt=``, ``results=``, ``compare=`` selects the mode (see conf/eval.yaml).
Returns the process exit status: 0, or 3 when the regression gate failed.

>>> status = run_eval(cfg, Path("outputs/eval/2025-01-01_00-00-00"))
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track

from sdq.config import plain
from sdq.data.tasks import TASKS, get_task
from sdq.errors import SdqConfigError
from sdq.report.compare import build_comparison
from sdq.report.gate import EXIT_GATE_FAILED, check_gate, check_limits
from sdq.report.io import (
    Reference,
    find_results,
    load_results,
    mean,
    resolve_reference,
    run_tags,
    split_block,
    task_names,
)
from sdq.report.plots import plot_averages, plot_compare_layer_errors, plot_heatmap, plot_languages
from sdq.report.run_table import language_rows, print_rows, rows_markdown
from sdq.report.wandb_log import log_comparison, log_results

XGLUE_TASKS = tuple(t for t in TASKS if t != "sib200")
MODES = ("ckpt", "results", "compare")


def requested_tasks(cfg: DictConfig, available: list[str] | None = None) -> list[str] | None:
    """``task=`` / ``tasks=[..]`` / ``tasks=all`` as canonical task names (None when neither is given)."""
    names = []
    if cfg.get("task"):
        names.append(str(cfg.task))
    tasks = plain(cfg.get("tasks"))
    if tasks == "all":
        names += list(available) if available is not None else list(XGLUE_TASKS)
    elif isinstance(tasks, str):
        names += [t.strip() for t in tasks.split(",") if t.strip()]
    elif tasks:
        names += [str(t) for t in tasks]
    return list(dict.fromkeys(get_task(t).name for t in names)) or None  # unknown task -> SdqConfigError


def check_languages(languages, tasks: list[str]) -> list[str] | None:
    """``languages=[..]``: every one must belong to every requested task."""
    if languages is None:
        return None
    languages = [str(lang) for lang in ([languages] if isinstance(languages, str) else languages)]
    for task in tasks:
        spec = get_task(task)  # open (sib200): any language of the data folder
        bad = [] if spec.open_languages else [lang for lang in languages if lang not in spec.languages]
        if bad:
            raise SdqConfigError(
                f"languages: {', '.join(bad)} not in task {task} "
                f"(languages: {', '.join(get_task(task).languages)})"
            )
    return languages


def select_languages(results: dict, tasks: list[str], languages: list[str] | None) -> dict:
    """A copy of ``results`` restricted to ``tasks`` and ``languages`` (averages recomputed)."""
    out = copy.deepcopy(results)
    for task in task_names(results):
        if task not in tasks:
            for section in (out, out.get("teacher") or {}, out.get("fidelity") or {}):
                section.pop(task, None)
    if languages is None:
        return out
    for task in tasks:
        for root in (out, out.get("teacher") or {}, out.get("fidelity") or {}):
            for split, block in (root.get(task) or {}).items():
                kept = {lang: block[lang] for lang in languages if lang in block}
                if kept and isinstance(next(iter(kept.values())), dict):
                    kept["avg"] = {k: mean(v[k] for v in kept.values()) for k in next(iter(kept.values()))}
                elif kept:
                    kept["avg"] = mean(kept.values())
                root[task][split] = kept
    return out


def _ckpt_for(ckpt, task: str) -> str:
    ckpt = plain(ckpt)
    if isinstance(ckpt, dict):
        if task not in ckpt:
            raise SdqConfigError(f"ckpt has no entry for task {task}; pass ckpt={{{task}: <path>, ...}}")
        ckpt = ckpt[task]
    if not Path(str(ckpt)).exists():
        raise SdqConfigError(f"ckpt={ckpt} does not exist; pass a run dir or its checkpoints/best.ckpt")
    return str(ckpt)


def merge_results(parts: list[dict]) -> dict:
    """One results dict holding several tasks (``teacher`` / ``fidelity`` merged per task)."""
    merged = dict(parts[0])
    tasks = [t for p in parts for t in task_names(p)]
    for p in parts[1:]:
        for t in task_names(p):
            merged[t] = p[t]
        for section in ("teacher", "fidelity", "examples"):
            if p.get(section):
                merged.setdefault(section, {}).update(p[section])
    if len(tasks) > 1:
        merged.update(task="+".join(tasks), tasks=tasks, metric={t: get_task(t).metric for t in tasks})
    return merged


def eval_limit(cfg: DictConfig) -> int | None:
    """``data.limit_eval``: dev/test examples per language, a positive integer or null (every example)."""
    limit = cfg.data.get("limit_eval")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SdqConfigError(f"data.limit_eval={limit!r} must be a positive integer (examples per language) "
                             "or null (every example)")
    return limit


def examples_line(results: dict, task: str) -> str:
    """``xnli examples evaluated per language: dev en 500, de 500; test en 500, de 500``."""
    counts = (results.get("examples") or {}).get(task) or {}
    parts = [f"{split} " + ", ".join(f"{lang} {n}" for lang, n in per_lang.items())
             for split, per_lang in counts.items() if per_lang]
    return f"{task} examples evaluated per language: {'; '.join(parts) or 'none'}"


def evaluate(cfg: DictConfig, tasks: list[str], reference: Reference | None, console: Console) -> dict:
    """Run ``sdq.evaluate.evaluate_checkpoint`` for every task (paths checked before anything loads)."""
    ckpts = {task: _ckpt_for(cfg.ckpt, task) for task in tasks}
    limit = eval_limit(cfg)
    from sdq.evaluate import evaluate_checkpoint  # torch + Lightning: only once the input is known good

    parts = []
    for i, task in enumerate(tasks, 1):
        console.rule(f"[bold]evaluating {task} ({i}/{len(tasks)}): {ckpts[task]}")
        parts.append(
            evaluate_checkpoint(
                ckpts[task],
                task,
                cfg.data.root,
                reference=reference.ckpt if reference else None,
                languages=check_languages(plain(cfg.languages), [task]),
                batch_size=int(cfg.data.eval_batch_size),
                limit_eval=limit,
            )
        )
        console.print(examples_line(parts[-1], task), soft_wrap=True)
    return merge_results(parts)


def report_run(
    results: dict,
    tasks: list[str],
    split: str,
    reference: dict | None,
    ref_label: str,
    out_dir: Path,
    plots: bool,
    console: Console,
) -> dict[str, list]:
    """Console tables, ``report.md`` and per-language PNGs; returns the rows per task."""
    tags = run_tags(results)
    name = f"{tags['model']} {tags['method']} {tags['bits']}"
    md, all_rows = [f"# {name}", ""], {}
    for task in tasks:
        if not split_block(results, task, split):
            raise SdqConfigError(f"no {task} {split} results to report (check split= and languages=)")
        metric = get_task(task).metric
        rows = language_rows(results, task, split, reference)
        all_rows[task] = rows
        print_rows(rows, metric, f"{task} {split} {metric} — {name}", ref_label, console)
        md += [f"## {task} {split} {metric}", "", rows_markdown(rows, metric, ref_label), ""]
        if plots:
            png = plot_languages(
                rows,
                task,
                metric,
                f"{task} {split} — {name}",
                out_dir / f"{task}_{split}_languages.png",
                ref_label,
            )
            md += [f"![{task} per language]({png.name})", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    return all_rows


def run_gate(all_rows: dict, split: str, max_drop, max_lang_drop, out_dir: Path, console: Console) -> int:
    """Apply the gate to every task; write gate.json; exit status 0 or 3."""
    outcomes = [check_gate(rows, task, split, max_drop, max_lang_drop) for task, rows in all_rows.items()]
    err = Console(stderr=True, width=console.width)
    for g in outcomes:
        (console if g.passed else err).print(
            f"[{'green' if g.passed else 'bold red'}]{g.message}", soft_wrap=True
        )
    (out_dir / "gate.json").write_text(
        json.dumps([{**vars(g), "passed": g.passed} for g in outcomes], indent=1)
    )
    return 0 if all(g.passed for g in outcomes) else EXIT_GATE_FAILED


def run_compare(cfg: DictConfig, out_dir: Path, console: Console) -> int:
    """compare=<multirun dir | [run dirs]>: table (md, csv), heatmap and averages chart per task."""
    paths = plain(cfg.compare)
    runs = find_results(paths)
    runs = [(p, r) for p, r in track(runs, description="reading results", console=console, transient=True)]
    tables = build_comparison(runs, split=str(cfg.split))
    wanted = requested_tasks(cfg, list(tables))
    if wanted:
        missing = [t for t in wanted if t not in tables]
        if missing:
            raise SdqConfigError(f"compare: no {', '.join(missing)} runs found (found: {', '.join(tables)})")
        tables = {t: tables[t] for t in wanted}
    md = []
    for task, table in tables.items():
        table.print(console)
        table.write_csv(out_dir / f"compare_{task}.csv")
        md += [table.markdown(), ""]
        if cfg.plots:
            for png in (
                plot_heatmap(table, out_dir / f"heatmap_{task}.png"),
                plot_averages(table, out_dir / f"averages_{task}.png"),
            ):
                if png is not None:
                    md += [f"![{png.stem}]({png.name})", ""]
        if cfg.plots and (png := plot_compare_layer_errors(runs, task, out_dir / f"layer_errors_{task}.png")):
            md += [f"![{png.stem}]({png.name})", ""]
    (out_dir / "compare.md").write_text("\n".join(md))
    if cfg.wandb.enabled:
        log_comparison(tables, out_dir, project=cfg.wandb.project, mode=cfg.wandb.mode)
    console.print(f"comparison of {len(runs)} runs written to {out_dir}")
    return 0


def run_eval(cfg: DictConfig, out_dir: Path, console: Console | None = None) -> int:
    """Dispatch on the mode; returns the exit status."""
    console = console or Console(width=160)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modes = [m for m in MODES if plain(cfg.get(m)) not in (None, "", [])]
    if len(modes) != 1:
        raise SdqConfigError(
            "pass exactly one of ckpt=<checkpoint or run dir>, results=<run dir> or "
            f"compare=<multirun dir> (got: {', '.join(modes) or 'none'}); see --cfg job"
        )
    split = str(cfg.split)
    if split not in ("test", "dev"):
        raise SdqConfigError(f"split={split} is not a results split; use split=test or split=dev")
    max_drop, max_lang_drop = check_limits(cfg.gate.max_drop, cfg.gate.max_lang_drop)
    if modes == ["compare"]:
        return run_compare(cfg, out_dir, console)
    reference = resolve_reference(plain(cfg.get("reference")))
    if modes == ["ckpt"]:
        tasks = requested_tasks(cfg)
        if tasks is None:
            raise SdqConfigError(
                "ckpt= needs task=<task it was trained for> (or tasks=[xnli,pos]); e.g. task=xnli"
            )
        check_languages(plain(cfg.languages), tasks)
        results = evaluate(cfg, tasks, reference, console)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    else:
        if reference is not None and reference.results is None:
            raise SdqConfigError(
                f"reference={reference.label} is a checkpoint without results.json; with results= "
                "pass a reference run dir or results.json (or use ckpt= to evaluate both)"
            )
        results = load_results(cfg.results)
        tasks = requested_tasks(cfg, task_names(results)) or task_names(results)
        missing = [t for t in tasks if t not in task_names(results)]
        if missing:
            raise SdqConfigError(
                f"results={cfg.results} has no {', '.join(missing)} results "
                f"(it has: {', '.join(task_names(results))}); pass task=<one of those>"
            )
    languages = check_languages(plain(cfg.languages), tasks)
    results = select_languages(results, tasks, languages)
    # a reference checkpoint was evaluated on the same examples: its metrics are the "teacher" block
    ref = None
    if reference is not None and reference.results is not None and not (modes == ["ckpt"] and reference.ckpt):
        ref = select_languages(
            reference.results, [t for t in tasks if t in task_names(reference.results)], languages
        )
    ref_label = "reference" if reference is not None else "FP teacher"
    all_rows = report_run(results, tasks, split, ref, ref_label, out_dir, bool(cfg.plots), console)
    if cfg.wandb.enabled:
        log_results(results, project=cfg.wandb.project, dir=out_dir, mode=cfg.wandb.mode)
    console.print(f"report written to {out_dir}")
    if max_drop is None and max_lang_drop is None:
        return 0
    return run_gate(all_rows, split, max_drop, max_lang_drop, out_dir, console)
