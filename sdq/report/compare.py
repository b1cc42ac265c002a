"""The paper-style comparison across runs: rows = model × method × bits, columns = languages + average.

Each cell carries its Δ vs the FP teacher: the teacher block the run itself recorded (same
examples), else the FP row of the same model (an explicit ``method=fp`` run, or the stage-1
teacher sub-dir ``<job>/teacher/results.json`` of a sweep). Runs sharing a row key (seeds) are averaged.

>>> tables = build_comparison(find_results("multirun/2025-01-01_00-00-00"), split="test")
>>> print(tables["xnli"].markdown()); tables["xnli"].write_csv("compare_xnli.csv")
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sdq.data.tasks import get_task
from sdq.report.io import (
    is_teacher_stage,
    label_bits,
    languages_of,
    mean,
    method_rank,
    order_languages,
    run_tags,
    split_block,
    task_names,
)

NAN = float("nan")


@dataclass
class CompareRow:
    """One model × method × bits row (values averaged over the runs that share the key)."""

    model: str
    method: str
    bits: str
    values: dict[str, float]  # lang -> metric, plus "avg"
    fp: dict[str, float] = field(default_factory=dict)  # lang -> FP teacher metric, plus "avg"
    agree: dict[str, float] = field(default_factory=dict)  # lang -> % agreement with the teacher
    sources: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} · {self.method} · {self.bits}"

    @property
    def is_fp(self) -> bool:
        return self.method == "fp"

    def delta(self, lang: str) -> float:
        return self.values.get(lang, NAN) - self.fp.get(lang, NAN)


@dataclass
class ComparisonTable:
    """Rows of one task and split; ``languages`` in the task's official order."""

    task: str
    metric: str
    split: str
    languages: list[str]
    rows: list[CompareRow]

    @property
    def has_agree(self) -> bool:
        return any(r.agree for r in self.rows)

    def cell(self, row: CompareRow, lang: str) -> str:
        v, d = row.values.get(lang, NAN), row.delta(lang)
        if not math.isfinite(v):
            return "—"
        if row.is_fp or not math.isfinite(d):
            return f"{v:.2f}"
        return f"{v:.2f} ({d:+.2f})"

    def header(self) -> list[str]:
        return ["model", "method", "bits", *self.languages, "avg"] + (
            ["agree % avg"] if self.has_agree else []
        )

    def body(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            cells = [r.model, r.method, r.bits] + [self.cell(r, lang) for lang in [*self.languages, "avg"]]
            if self.has_agree:
                a = r.agree.get("avg", NAN)
                cells.append(f"{a:.2f}" if math.isfinite(a) else "—")
            out.append(cells)
        return out

    def long_rows(self) -> tuple[list[str], list[list]]:
        """Numeric long format for dashboards: one row per run × language (and ``avg``); NaN = absent."""
        cols = ["model", "method", "bits", "language", self.metric, "delta_vs_fp", "agree"]
        data = [[r.model, r.method, r.bits, lang, r.values.get(lang, NAN), r.delta(lang), r.agree.get(lang, NAN)]
                for r in self.rows for lang in [*self.languages, "avg"]]
        return cols, data

    def markdown(self) -> str:
        """Markdown table; a caption says what the numbers in parentheses are."""
        head = self.header()
        lines = [
            f"**{self.task} {self.split} {self.metric}** — cells: metric (Δ vs FP teacher, points)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * 3 + "---:|" * (len(head) - 3),
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.body()]
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> None:
        """Machine-readable: one numeric column per language, its Δ, and per-language agreement."""
        cols = [*self.languages, "avg"]
        head = ["task", "split", "metric", "model", "method", "bits", "n_runs"] + cols
        head += [f"delta_{c}" for c in cols] + [f"agree_{c}" for c in cols]
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            for r in self.rows:
                w.writerow(
                    [self.task, self.split, self.metric, r.model, r.method, r.bits, len(r.sources)]
                    + [_num(r.values.get(c)) for c in cols]
                    + [_num(r.delta(c)) for c in cols]
                    + [_num(r.agree.get(c)) for c in cols]
                )

    def print(self, console: Console | None = None) -> None:
        """Rich table: one run per row, each cell the metric over its Δ vs FP (red = drop)."""
        models = list(dict.fromkeys(r.model for r in self.rows))
        table = Table(
            title=f"{self.task} {self.split} {self.metric} ({', '.join(models)}) — metric / Δ vs FP teacher"
        )
        table.add_column("run", no_wrap=True)
        for lang in [*self.languages, "avg"] + (["agree%"] if self.has_agree else []):
            table.add_column(lang, justify="right", no_wrap=True)
        for r in self.rows:
            cells = [r.label if len(models) > 1 else f"{r.method} {r.bits}"]
            for lang in [*self.languages, "avg"]:
                v, d = r.values.get(lang, NAN), r.delta(lang)
                text = f"{v:.1f}" if math.isfinite(v) else "—"
                if math.isfinite(d) and not r.is_fp:
                    text += f"\n[{'red' if d < 0 else 'green'}]{d:+.1f}[/]"
                cells.append(text)
            if self.has_agree:
                a = r.agree.get("avg", NAN)
                cells.append(f"{a:.1f}" if math.isfinite(a) else "—")
            table.add_row(*cells, style="bold" if r.is_fp else None)
        (console or Console(width=200)).print(table)


def _num(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.4f}"


def _mean_dicts(dicts: list[dict]) -> dict[str, float]:
    keys = dict.fromkeys(k for d in dicts for k in d)
    return {k: mean(d.get(k) for d in dicts) for k in keys}


def _sort_key(row: CompareRow) -> tuple:
    """FP first, then by bit width (high to low), then method order: the paper's table layout."""
    return (row.model, row.bits != "fp32", -(label_bits(row.bits) or 0), row.bits, method_rank(row.method),
            row.method)


def build_comparison(runs: list[tuple[Path, dict]], split: str = "test") -> dict[str, ComparisonTable]:
    """One :class:`ComparisonTable` per task found in ``runs`` (``find_results`` output)."""
    tables = {}
    tasks = list(dict.fromkeys(t for _, res in runs for t in task_names(res)))
    for task in tasks:
        groups: dict[tuple, list[tuple[Path, dict]]] = {}
        for path, res in runs:
            if split_block(res, task, split):
                tags = run_tags(res)
                groups.setdefault((tags["model"], tags["method"], tags["bits"]), []).append((path, res))
        # explicit fp runs win over the stage-1 teacher sub-dirs of the student jobs
        for key, members in groups.items():
            if key[1] == "fp" and any(not is_teacher_stage(p, r) for p, r in members):
                groups[key] = [(p, r) for p, r in members if not is_teacher_stage(p, r)]
        fp_rows = {
            k[0]: [split_block(r, task, split) for _, r in v] for k, v in groups.items() if k[1] == "fp"
        }
        rows = []
        for (model, method, bits), members in groups.items():
            values = _mean_dicts([split_block(r, task, split) for _, r in members])
            own = [split_block(r, task, split, "teacher") for _, r in members]
            if method == "fp":
                fp = values
            elif all(own):
                fp = _mean_dicts(own)
            else:
                fp = _mean_dicts(fp_rows.get(model, []))
            agree = _mean_dicts(
                [
                    {k: v.get("agree", NAN) for k, v in split_block(r, task, split, "fidelity").items()}
                    for _, r in members
                ]
            )
            agree = {k: v for k, v in agree.items() if math.isfinite(v)}
            rows.append(CompareRow(model, method, bits, values, fp, agree, [str(p) for p, _ in members]))
        langs = order_languages(task, [lang for r in rows for lang in languages_of(r.values)])
        tables[task] = ComparisonTable(task, get_task(task).metric, split, langs, sorted(rows, key=_sort_key))
    return tables
