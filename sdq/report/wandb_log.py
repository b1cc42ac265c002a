"""Log a results dict to Weights & Biases: per-language table, bar charts, summary metrics, tags.

Mode by W&B's own ``WANDB_MODE``; unset, online when logged in (``wandb login``) and offline
otherwise (:func:`sdq.lit.logger.wandb_mode`); offline run dirs land in ``<dir>/wandb/offline-run-*`` and upload later with ``wandb sync``.
Tags and group match the training logger (``model=…``, ``task-model`` group) so sweeps and
evaluations group together in one project dashboard.

>>> summary = log_results(results, dir="outputs/eval/run")         # a new run, finished here
>>> log_results(results, run=trainer.logger.experiment)           # inside an open training run
"""

from __future__ import annotations

import math
from pathlib import Path

from sdq.data.tasks import get_task
from sdq.report.io import run_tags, split_block, task_names
from sdq.report.run_table import language_rows

SPLITS = ("test", "dev")


def wandb_mode(mode: str | None = None) -> str:
    """``online`` / ``offline`` / ``disabled``: ``mode`` or ``WANDB_MODE`` when given, else online when
    logged in, offline otherwise."""
    from sdq.lit.logger import wandb_mode as lit_wandb_mode

    return lit_wandb_mode(mode)


def _finite(v: float) -> float | None:
    return round(float(v), 6) if v is not None and math.isfinite(v) else None


def summary_metrics(results: dict) -> dict:
    """Flat ``{task}/{split}/...`` summary: per-language values, average, worst language, drop vs FP."""
    out: dict = {}
    for task in task_names(results):
        for split in SPLITS:
            if not split_block(results, task, split):
                continue
            rows = language_rows(results, task, split)
            langs, avg = rows[:-1], rows[-1]
            base = f"{task}/{split}"
            out.update({f"{base}/{r.lang}": r.value for r in langs})
            out[f"{base}/avg"] = avg.value
            worst = min(langs, key=lambda r: r.value)
            out[f"{base}/worst_lang"], out[f"{base}/worst_value"] = worst.lang, worst.value
            if math.isfinite(avg.ref):
                out[f"{base}/fp_avg"] = avg.ref
                out[f"{base}/drop_vs_fp"] = avg.ref - avg.value  # positive = worse than FP
                with_ref = [r for r in langs if math.isfinite(r.ref)]
                worst_drop = min(with_ref, key=lambda r: r.delta)
                out[f"{base}/worst_drop_lang"] = worst_drop.lang
                out[f"{base}/worst_drop"] = -worst_drop.delta
            for key in ("agree", "kl"):
                if math.isfinite(getattr(avg, key)):
                    out[f"{base}/{key}_avg"] = getattr(avg, key)
    return out


def language_table(results: dict):
    """A ``wandb.Table`` with one row per task × split × language (no average row)."""
    import wandb

    cols = ["task", "split", "lang", "metric", "value", "fp_teacher", "delta_vs_fp", "agree", "kl"]
    data = []
    for task in task_names(results):
        for split in SPLITS:
            if split_block(results, task, split):
                for r in language_rows(results, task, split)[:-1]:
                    data.append(
                        [
                            task,
                            split,
                            r.lang,
                            get_task(task).metric,
                            _finite(r.value),
                            _finite(r.ref),
                            _finite(r.delta),
                            _finite(r.agree),
                            _finite(r.kl),
                        ]
                    )
    return wandb.Table(columns=cols, data=data)


def _layer_table(results: dict):
    import wandb

    data = [
        [e.get("epoch"), kind, layer, _finite(v)]
        for e in results.get("layer_errors") or []
        for kind, values in e.items()
        if isinstance(values, list)
        for layer, v in enumerate(values)
    ]
    return wandb.Table(columns=["epoch", "kind", "layer", "error"], data=data) if data else None


def log_results(
    results: dict,
    run=None,
    *,
    project: str = "sdq",
    dir: str | Path | None = None,
    mode: str | None = None,
    name: str | None = None,
    job_type: str = "eval",
) -> dict:
    """Log ``results`` into ``run`` (or a new run, finished here); returns the summary metrics."""
    import wandb

    labels = run_tags(results)
    task = "+".join(task_names(results))
    # the same tags, group and name as the training logger (sdq.lit.builders.build_logger)
    tags = {
        "model": labels["model"],
        "task": task,
        "method": labels["method"],
        "quant": labels["quant"],
        "bits": results.get("bits"),
    }
    own = run is None
    if own:
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project,
            dir=str(dir) if dir is not None else None,
            mode=wandb_mode(mode),
            name=name or "-".join(str(v) for v in tags.values()),
            group=f"{task}-{tags['model']}",
            job_type=job_type,
            tags=[f"{k}={v}" for k, v in tags.items()],
            reinit="create_new",
            config={**tags, "bits_label": labels["bits"], "config": results.get("config")},
            settings=wandb.Settings(silent=True),
        )
    else:
        run.config.update({**tags, "bits_label": labels["bits"]}, allow_val_change=True)
    table = language_table(results)
    payload = {"per_language": table}
    for t in task_names(results):
        metric = get_task(t).metric
        rows = [r for r in table.data if r[0] == t and r[1] == "test"]
        if rows:
            sub = wandb.Table(columns=table.columns, data=rows)
            payload[f"charts/{t}_test_{metric}"] = wandb.plot.bar(
                sub, "lang", "value", title=f"{t} test {metric} per language"
            )
            if any(r[6] is not None for r in rows):
                payload[f"charts/{t}_test_delta_vs_fp"] = wandb.plot.bar(
                    sub, "lang", "delta_vs_fp", title=f"{t} test Δ {metric} vs FP teacher (points)"
                )
    layers = _layer_table(results)
    if layers is not None:
        payload["diag/layer_errors"] = layers
    run.log(payload)
    summary = summary_metrics(results)
    for key, value in summary.items():
        run.summary[key] = value
    if own:
        run.finish()
    return summary


def log_comparison(
    tables: dict, out_dir: str | Path, *, project: str = "sdq", mode: str | None = None
) -> None:
    """One ``compare`` run: each comparison table as a ``wandb.Table`` plus the heatmap / averages PNGs."""
    import wandb

    out_dir = Path(out_dir)
    run = wandb.init(
        project=project,
        dir=str(out_dir),
        mode=wandb_mode(mode),
        job_type="compare",
        name=f"compare-{'+'.join(tables)}",
        tags=["compare"],
        reinit="create_new",
        settings=wandb.Settings(silent=True),
    )
    payload = {}
    for task, table in tables.items():
        payload[f"compare/{task}"] = wandb.Table(columns=table.header(), data=table.body())
        cols, data = table.long_rows()  # numeric: group / plot by language, method, bits in the W&B UI
        payload[f"compare/{task}_per_language"] = wandb.Table(columns=cols, data=data)
        for kind in ("heatmap", "averages"):
            png = out_dir / f"{kind}_{task}.png"
            if png.is_file():
                payload[f"compare/{kind}_{task}"] = wandb.Image(str(png))
    run.log(payload)
    run.finish()
