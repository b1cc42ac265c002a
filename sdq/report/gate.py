"""Regression gate: fail (exit status 3) when a model dropped more than allowed vs a reference.

Drops are in metric points, reference − model (positive = worse), on the languages both have.

>>> result = check_gate(rows, "xnli", "test", max_drop=0.5, max_lang_drop=1.0)
>>> result.passed, result.failed_languages
(False, ['sw', 'ur'])
>>> print(result.message)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sdq.errors import SdqConfigError
from sdq.report.run_table import LangRow

EXIT_GATE_FAILED = 3


@dataclass
class GateResult:
    """Outcome of the gate on one task/split."""

    task: str
    split: str
    avg_drop: float
    lang_drops: dict[str, float]
    max_drop: float | None
    max_lang_drop: float | None
    failed_languages: list[str] = field(default_factory=list)
    avg_failed: bool = False

    @property
    def passed(self) -> bool:
        return not self.avg_failed and not self.failed_languages

    @property
    def message(self) -> str:
        where = f"{self.task} {self.split}"
        if self.passed:
            worst = max(self.lang_drops, key=self.lang_drops.get) if self.lang_drops else "-"
            return (
                f"gate passed on {where}: avg drop {self.avg_drop:+.2f} (allowed {_lim(self.max_drop)}), "
                f"worst language {worst} {self.lang_drops.get(worst, 0.0):+.2f} "
                f"(allowed {_lim(self.max_lang_drop)})"
            )
        parts = []
        if self.avg_failed:
            parts.append(f"avg drop {self.avg_drop:.2f} > {self.max_drop:g}")
        if self.failed_languages:
            langs = ", ".join(f"{lang} ({self.lang_drops[lang]:.2f})" for lang in self.failed_languages)
            parts.append(f"languages dropping more than {self.max_lang_drop:g}: {langs}")
        return f"gate FAILED on {where}: " + "; ".join(parts)


def _lim(v: float | None) -> str:
    return "any" if v is None else f"{v:g}"


def check_limits(max_drop, max_lang_drop) -> tuple[float | None, float | None]:
    """Validate ``gate.max_drop`` / ``gate.max_lang_drop`` (None or a number ≥ 0)."""
    out = []
    for name, v in (("gate.max_drop", max_drop), ("gate.max_lang_drop", max_lang_drop)):
        if v is None:
            out.append(None)
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = float("nan")
        if not math.isfinite(v) or v < 0:
            raise SdqConfigError(f"{name}={v!r} must be a number of metric points ≥ 0 (e.g. {name}=0.5)")
        out.append(v)
    return out[0], out[1]


def check_gate(
    rows: list[LangRow],
    task: str,
    split: str,
    max_drop: float | None = None,
    max_lang_drop: float | None = None,
) -> GateResult:
    """Compare per-language rows (from ``language_rows`` with a reference) with the limits."""
    max_drop, max_lang_drop = check_limits(max_drop, max_lang_drop)
    langs = {r.lang: r for r in rows if r.lang != "avg" and math.isfinite(r.ref) and math.isfinite(r.value)}
    if not langs:
        raise SdqConfigError(
            f"gate: no reference metrics for {task} {split}; "
            "pass reference=<teacher run dir, results.json or .ckpt>"
        )
    drops = {lang: round(r.ref - r.value, 6) for lang, r in langs.items()}  # rounding: no 1e-15 false alarms
    avg = next(r for r in rows if r.lang == "avg")
    avg_drop = round(avg.ref - avg.value, 6)
    failed = [lang for lang, d in drops.items() if max_lang_drop is not None and d > max_lang_drop]
    failed.sort(key=lambda lang: -drops[lang])
    return GateResult(
        task,
        split,
        avg_drop,
        drops,
        max_drop,
        max_lang_drop,
        failed,
        avg_failed=max_drop is not None and avg_drop > max_drop,
    )
