"""PNG figures: per-language bars of one run, the comparison heatmap, the averages chart, the per-layer
error panels of a comparison.

matplotlib ``Figure`` objects rendered by the Agg canvas: no pyplot state, any backend setting.

>>> plot_languages(rows, "xnli", "acc", "me5_small sdq b4", "run/xnli_languages.png", "FP teacher")
>>> plot_heatmap(tables["xnli"], "compare/heatmap_xnli.png")
>>> plot_averages(tables["xnli"], "compare/averages_xnli.png")
>>> plot_compare_layer_errors(runs, "xnli", "compare/layer_errors_xnli.png")   # runs: [(dir, results)]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from sdq.report.compare import ComparisonTable
from sdq.report.io import bits_label, label_bits, method_label, method_rank
from sdq.report.run_table import LangRow

DPI = 120


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # Agg whatever the interactive backend is
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _signed(v: float) -> str:
    """``+1.2`` / ``-0.4``, and ``0.0`` (not ``-0.0``) for changes that round to zero."""
    return "0.0" if abs(v) < 0.05 else f"{v:+.1f}"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height))


def plot_languages(
    rows: list[LangRow], task: str, metric: str, title: str, path: str | Path, ref_label: str = "reference"
) -> Path:
    """Bars per language (run vs reference, Δ written above) and, when known, agreement % below."""
    x = np.arange(len(rows))  # (L,)
    value = np.array([r.value for r in rows])
    ref = np.array([r.ref for r in rows])
    agree = np.array([r.agree for r in rows])
    has_ref, has_agree = np.isfinite(ref).any(), np.isfinite(agree).any()
    fig = _figure(max(6.0, 0.55 * len(rows) + 2), 6.5 if has_agree else 4.2)
    axes = fig.subplots(
        2 if has_agree else 1,
        1,
        squeeze=False,
        sharex=True,
        gridspec_kw={"height_ratios": [2, 1][: 1 + int(has_agree)]},
    )
    ax = axes[0, 0]
    width = 0.4 if has_ref else 0.7
    if has_ref:
        ax.bar(x - width / 2, ref, width, label=ref_label, color="#9e9e9e")
    bars = ax.bar(x + (width / 2 if has_ref else 0), value, width, label="this run", color="#1f77b4")
    finite = np.concatenate([value[np.isfinite(value)], ref[np.isfinite(ref)]])
    lo, hi = float(finite.min()), float(finite.max())
    ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo) - 2), hi + 0.12 * (hi - lo) + 2)
    if has_ref:
        for bar, r in zip(bars, rows, strict=True):
            if math.isfinite(r.delta):
                ax.annotate(
                    _signed(r.delta),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                    color="#c62828" if r.delta < 0 else "#2e7d32",
                )
    ax.set_ylabel(f"{task} {metric}")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if rows and rows[-1].lang == "avg":
        for a in axes[:, 0]:
            a.axvline(len(rows) - 1.5, color="black", lw=0.8)  # separates the average
    if has_agree:
        ax2 = axes[1, 0]
        ax2.bar(x, agree, 0.7, color="#7b1fa2")
        ax2.set_ylabel("agree % with teacher")
        fin = agree[np.isfinite(agree)]
        ax2.set_ylim(max(0.0, float(fin.min()) - 5), 100)
        ax2.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(x, [r.lang for r in rows])
    axes[-1, 0].set_xlabel("language")
    return _save(fig, path)


def plot_heatmap(table: ComparisonTable, path: str | Path) -> Path | None:
    """Rows × languages (+ avg), colour = Δ vs FP teacher, diverging and centred at 0; None if no Δ."""
    rows = [r for r in table.rows if not r.is_fp]
    cols = [*table.languages, "avg"]
    data = np.array([[r.delta(c) for c in cols] for r in rows])  # (R, L+1)
    if not rows or not np.isfinite(data).any():
        return None
    bound = max(float(np.nanmax(np.abs(data))), 0.1)
    fig = _figure(max(6.0, 0.62 * len(cols) + 3.5), max(2.5, 0.42 * len(rows) + 1.6))
    ax = fig.subplots()
    im = ax.imshow(
        np.ma.masked_invalid(data), cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto"
    )
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_yticks(np.arange(len(rows)), [r.label for r in rows])
    ax.axvline(len(cols) - 1.5, color="black", lw=1.2)  # separates the average column
    ax.set_xlabel("language")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = data[i, j]
            if math.isfinite(v):
                ax.text(
                    j,
                    i,
                    _signed(v),
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white" if abs(v) > 0.6 * bound else "black",
                )
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label(f"Δ {table.metric} vs FP (points)")
    ax.set_title(f"{table.task} {table.split}: Δ {table.metric} vs the FP teacher per language (red = drop)")
    return _save(fig, path)


def plot_averages(table: ComparisonTable, path: str | Path) -> Path:
    """Horizontal bars of every row's average, the FP teacher's average as a dashed line per model."""
    rows = table.rows
    y = np.arange(len(rows))  # (R,)
    avgs = np.array([r.values.get("avg", np.nan) for r in rows])
    methods = list(dict.fromkeys(r.method for r in rows))
    colours = colormaps["tab10"]
    fig = _figure(8.0, max(2.5, 0.4 * len(rows) + 1.4))
    ax = fig.subplots()
    ax.barh(y, avgs, color=[colours(methods.index(r.method) % 10) for r in rows], height=0.7)
    labelled = False
    for model in dict.fromkeys(r.model for r in rows):
        idx = [i for i, r in enumerate(rows) if r.model == model]
        fps = [rows[i].fp.get("avg", np.nan) for i in idx]
        fp = np.nanmean(fps) if np.isfinite(fps).any() else np.nan
        if math.isfinite(fp):
            ax.vlines(
                fp,
                min(idx) - 0.45,
                max(idx) + 0.45,
                colors="black",
                linestyles="--",
                lw=1.5,
                label=None if labelled else "FP teacher avg",
            )
            labelled = True
    ax.set_yticks(y, [r.label for r in rows])
    ax.invert_yaxis()
    fin = avgs[np.isfinite(avgs)]
    left = 0.0
    if fin.size:
        lo, hi = float(fin.min()), float(fin.max())
        left = max(0.0, lo - 0.3 * (hi - lo) - 3)
        ax.set_xlim(left, hi + 0.1 * (hi - lo) + 2)
    for yi, r, v in zip(y, rows, avgs, strict=True):  # value (Δ) inside the bar, clear of the FP line
        if math.isfinite(v):
            d = r.delta("avg")
            txt = f"{v:.2f}" + (f"  ({d:+.2f})" if math.isfinite(d) and not r.is_fp else "")
            ax.text(
                left, yi, "  " + txt, va="center", ha="left", fontsize=8.5, color="white", fontweight="bold"
            )
    ax.set_xlabel(f"average {table.task} {table.split} {table.metric} over languages")
    ax.set_title(f"{table.task}: average over languages")
    if labelled:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def layer_error_panels(runs: list[tuple[Path, dict]], task: str) -> dict[str, dict[str, dict]]:
    """{bits label: {method label: the run's last per-layer errors}}; ``sdq+unlabeled`` apart from ``sdq``."""
    panels: dict[str, dict[str, dict]] = {}
    for _, r in runs:
        if task in r and r.get("layer_errors"):  # the last validation: the reloaded best model
            panels.setdefault(bits_label(r), {})[method_label(r)] = r["layer_errors"][-1]
    return panels


def plot_compare_layer_errors(runs: list[tuple[Path, dict]], task: str, path: str | Path) -> Path | None:
    """Accumulated (carried) and local attention error per layer, one panel per bit width, one colour per
    method (the same colour for a method in every panel)."""
    from matplotlib import rcParams

    from sdq.distill.diagnostics import draw_layer_errors

    panels = layer_error_panels(runs, task)
    if not panels:
        return None
    methods = sorted({m for p in panels.values() for m in p}, key=lambda m: (method_rank(m), m))
    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    labels = sorted(panels, key=lambda b: (-(label_bits(b) or 0), b))
    fig = Figure(figsize=(5.2 * len(labels) + 2.0, 4.6))
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        curves = {m: panels[label][m] for m in methods if m in panels[label]}
        draw_layer_errors(ax, curves, kinds=("layer_carried", "attn_local"),
                          colours=[palette[methods.index(m) % len(palette)] for m in curves])
        ax.set_title(label)
        if ax is not axes[0][0]:
            ax.set_ylabel("")
    seen = {n: h for ax in axes[0] for h, n in zip(*ax.get_legend_handles_labels())}
    names = sorted(seen, key=lambda n: (methods.index(n.split(" · ")[0]), n))  # legend in method order
    fig.legend([seen[n] for n in names], names, fontsize=8, loc="upper left", bbox_to_anchor=(0.995, 0.93))
    fig.suptitle(f"{task}: quantization error per layer vs the FP teacher (dev batch; solid = carried through "
                 "the quantized layers, dotted = attention block alone)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
