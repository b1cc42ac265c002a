"""One run's per-language table: metric, reference metric, Δ, agreement and KL with the teacher.

>>> rows = language_rows(results, "xnli", "test", reference=teacher_results)
>>> rows[-1].lang, rows[-1].delta          # the average row comes last
('avg', -0.8)
>>> print(rows_markdown(rows, "acc", "FP teacher"))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from sdq.errors import SdqConfigError
from sdq.report.io import languages_of, mean, order_languages, split_block

NAN = float("nan")


@dataclass(frozen=True)
class LangRow:
    """One language (or ``avg``) of one run."""

    lang: str
    value: float
    ref: float = NAN  # reference (FP teacher / reference run) metric on the same language
    agree: float = NAN  # % predictions equal to the teacher's
    kl: float = NAN  # mean KL(teacher ‖ student)

    @property
    def delta(self) -> float:
        return self.value - self.ref


def reference_block(results: dict, task: str, split: str, reference: dict | None = None) -> dict:
    """Per-language reference metrics: the ``reference`` run's, else the run's own FP teacher's."""
    if reference is not None:
        block = split_block(reference, task, split)
        if not block:
            raise SdqConfigError(
                f"the reference has no {task} {split} results; pass a reference run of task {task}"
            )
        return block
    return split_block(results, task, split, "teacher")


def comparable_avg(block: dict, langs: list[str]) -> float:
    """The block's average over ``langs`` (its stored ``avg`` when it covers exactly those languages)."""
    if set(languages_of(block)) == set(langs) and "avg" in block:
        return float(block["avg"])
    return mean(block.get(lang) for lang in langs)


def language_rows(
    results: dict, task: str, split: str = "test", reference: dict | None = None
) -> list[LangRow]:
    """Rows for every language of ``task`` in ``results`` (official order) plus the average row."""
    block = split_block(results, task, split)
    ref = reference_block(results, task, split, reference)
    fid = split_block(results, task, split, "fidelity")
    langs = order_languages(task, languages_of(block))
    rows = []
    for lang in langs:
        f = fid.get(lang) or {}
        rows.append(
            LangRow(
                lang,
                float(block[lang]),
                float(ref.get(lang, NAN)),
                float(f.get("agree", NAN)),
                float(f.get("kl", NAN)),
            )
        )
    common = [lang for lang in langs if lang in ref]
    f = fid.get("avg") or {}
    avg = float(block["avg"]) if "avg" in block else mean(block[lang] for lang in langs)
    ref_avg = NAN
    if common:  # compare averages over the same languages
        avg = comparable_avg(block, common)
        ref_avg = comparable_avg(ref, common)
    rows.append(LangRow("avg", avg, ref_avg, float(f.get("agree", NAN)), float(f.get("kl", NAN))))
    return rows


def _fmt(value: float, spec: str = ".2f") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _columns(rows: list[LangRow], metric: str, ref_label: str) -> tuple[list[str], list[list[str]]]:
    has_ref = any(math.isfinite(r.ref) for r in rows)
    has_fid = any(math.isfinite(r.agree) for r in rows)
    header = (
        ["lang", metric] + ([ref_label, "Δ"] if has_ref else []) + (["agree %", "KL(T‖S)"] if has_fid else [])
    )
    body = []
    for r in rows:
        cells = [r.lang, _fmt(r.value)]
        if has_ref:
            cells += [_fmt(r.ref), _fmt(r.delta, "+.2f")]
        if has_fid:
            cells += [_fmt(r.agree), _fmt(r.kl, ".4f")]
        body.append(cells)
    return header, body


def rows_markdown(rows: list[LangRow], metric: str, ref_label: str = "reference") -> str:
    """A GitHub markdown table of the rows (average row in bold)."""
    header, body = _columns(rows, metric, ref_label)
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for cells in body:
        if cells[0] == "avg":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_rows(
    rows: list[LangRow], metric: str, title: str, ref_label: str = "reference", console: Console | None = None
) -> None:
    """The rows as a rich table on the console; regressions in red, gains in green."""
    header, body = _columns(rows, metric, ref_label)
    table = Table(title=title)
    for c in header:
        table.add_column(c, justify="right")
    for row, cells in zip(rows, body, strict=True):
        if "Δ" in header and math.isfinite(row.delta):
            i = header.index("Δ")
            colour = "red" if row.delta < 0 else "green"
            cells = [*cells[:i], f"[{colour}]{cells[i]}[/{colour}]", *cells[i + 1 :]]
        table.add_row(*cells, style="bold" if row.lang == "avg" else None)
    (console or Console(width=120)).print(table)
