"""Reports of sdq runs: per-language tables, cross-run comparison, plots, W&B logging, regression gate.

Light imports only: matplotlib and wandb load when a plot is drawn or a run is logged.

>>> from sdq.report import load_results, language_rows, build_comparison, check_gate
>>> from sdq.report.wandb_log import log_results      # the training pipeline calls this at the end
"""

from sdq.report.compare import CompareRow, ComparisonTable, build_comparison
from sdq.report.gate import EXIT_GATE_FAILED, GateResult, check_gate
from sdq.report.io import find_results, load_results, resolve_reference, run_tags, task_names
from sdq.report.run_table import LangRow, language_rows, print_rows, rows_markdown

__all__ = [
    "EXIT_GATE_FAILED",
    "CompareRow",
    "ComparisonTable",
    "GateResult",
    "LangRow",
    "build_comparison",
    "check_gate",
    "find_results",
    "language_rows",
    "load_results",
    "print_rows",
    "resolve_reference",
    "rows_markdown",
    "run_tags",
    "task_names",
]
