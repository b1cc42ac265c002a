"""Find and read results.json files, and name the runs they describe (model × method × bits).

>>> results = load_results("outputs/xnli/me5_small/sdq-w8a8-b4/2025-01-01_00-00-00")
>>> task_names(results), run_tags(results)["bits"]
(['xnli'], 'b4')
>>> runs = find_results(["multirun/2025-01-01_00-00-00"])   # every results.json below, teacher sub-dirs too
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from sdq.data.tasks import TASKS
from sdq.data.unlabeled import UnlabeledSpec
from sdq.errors import SdqConfigError, SdqDataError

RESULTS_FILE = "results.json"
CKPT_NAMES = ("best.ckpt", "last.ckpt")
# Row order of comparison tables: the reference first, then the paper's methods.
METHOD_ORDER = ("fp", "fp_continued", "ptq", "ptq_datafree", "qat", "qat_kd", "sdq_paper", "sdq", "sdq_noise")
UNLABELED = "+unlabeled"  # method label suffix of a run that distilled on unlabeled data


def load_results(path: str | Path) -> dict:
    """A results dict from a results.json file or a run dir holding one (clear error otherwise)."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise SdqDataError(
            f"no results found at {file}; pass a run dir holding {RESULTS_FILE} or the file itself"
        )
    try:
        results = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SdqDataError(f"{file} is not valid JSON ({exc}); re-run the job or delete the file") from None
    if not isinstance(results, dict) or not task_names(results):
        raise SdqDataError(
            f"{file} holds no per-language task results (expected {{task: {{split: {{lang: v}}}}}})"
        )
    return results


def find_results(paths: str | Path | list) -> list[tuple[Path, dict]]:
    """Every results.json under the given files / run dirs / multirun dirs, sorted by path."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise SdqConfigError(f"compare: {p} does not exist; pass a multirun dir or a list of run dirs")
        found.extend([p] if p.is_file() else sorted(p.rglob(RESULTS_FILE)))
    if not found:
        raise SdqDataError(
            f"compare: no {RESULTS_FILE} under {', '.join(map(str, paths))}; did the runs finish?"
        )
    return [(f, load_results(f)) for f in dict.fromkeys(found)]


def task_names(results: dict) -> list[str]:
    """The XGLUE tasks a results dict holds metrics for (its top-level task keys)."""
    return [
        k for k, v in results.items() if k in TASKS and isinstance(v, dict) and ("test" in v or "dev" in v)
    ]


def quant_label(quant: dict | None) -> str | None:
    """``w4a8`` / ``w4`` / ``w4-kmeans`` / ``w2a8-e4`` from a resolved quant config dict; None when absent.

    >>> quant_label({"weight": {"bits": 4}, "act": {"bits": 8}, "embedding": {"bits": 4}})
    'w4a8'
    """
    if not isinstance(quant, dict) or not isinstance(quant.get("weight"), dict):
        return None
    if quant.get("overrides") or quant.get("token_bits"):  # mixed precision: bits differ per module / token
        return str(quant.get("name") or "mixed")
    w, a, e = quant["weight"], quant.get("act"), quant.get("embedding")
    label = f"w{w.get('bits')}" + (f"a{a.get('bits')}" if isinstance(a, dict) else "")
    if isinstance(e, dict) and e.get("bits") != w.get("bits"):
        label += f"-e{e.get('bits')}"
    if w.get("scheme", "uniform") not in ("uniform", "lsq"):
        label += f"-{w['scheme']}"
    if quant.get("attention"):
        label += "-attn"
    return label


def label_bits(label: str) -> int | None:
    """Leading bit width of a bits label (``w4a8`` / ``b4`` -> 4); None for ``fp32``, presets, ``?``."""
    digits = re.match(r"[bw](\d+)", label)
    return int(digits.group(1)) if digits else None


def bits_label(results: dict) -> str:
    """``w4a8``-style label from the run's resolved quant config (``b4`` for the bits=4 shortcut when the
    config is absent), ``fp32`` for FP runs."""
    config = results.get("config") or {}
    method_cfg = config.get("method") or {}
    if results.get("method") in ("fp", "fp_continued") or method_cfg.get("quantize") is False:
        return "fp32"  # bits= does not apply to an unquantized model
    derived = quant_label(config.get("quant"))
    if derived:
        return derived
    bits = results.get("bits")
    if isinstance(bits, bool) or bits is None:
        return str(results.get("quant") or "?")
    if isinstance(bits, (int, float)) or str(bits).isdigit():
        return f"b{int(bits)}"
    return str(bits)


def method_label(results: dict) -> str:
    """The run's method, ``+unlabeled`` when it distilled on unlabeled data (kept apart from its control).

    >>> method_label({"method": "sdq", "config": {"unlabeled": {"path": "u/{lang}.tsv"}}})
    'sdq+unlabeled'
    """
    method = str(results.get("method") or "?")
    unlabeled = (results.get("config") or {}).get("unlabeled")
    return method + UNLABELED if UnlabeledSpec.from_config(unlabeled).enabled else method


def method_rank(label: str) -> int:
    """Position of a method label in METHOD_ORDER (``sdq+unlabeled`` beside ``sdq``); unknown ones last.

    >>> method_rank("sdq+unlabeled") == method_rank("sdq") < method_rank("my_method")
    True
    """
    base = label.removesuffix(UNLABELED)
    return METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)


def run_tags(results: dict) -> dict[str, str]:
    """model / method / bits / quant strings of a run, for labels, W&B tags and table rows."""
    return {
        "model": str(results.get("model") or "?"),
        "method": method_label(results),
        "bits": bits_label(results),
        "quant": str(results.get("quant") or "?"),
    }


def is_teacher_stage(path: Path, results: dict) -> bool:
    """A stage-1 FP teacher written inside a student run (``<job>/teacher/results.json``)."""
    return results.get("stage") == "teacher" or path.parent.name == "teacher"


def split_block(results: dict, task: str, split: str, section: str | None = None) -> dict:
    """``results[section][task][split]`` (or ``results[task][split]``); empty dict when absent."""
    root = results.get(section, {}) if section else results
    return dict(((root or {}).get(task) or {}).get(split) or {})


def languages_of(block: dict) -> list[str]:
    """Language keys of a split block, without the average."""
    return [k for k in block if k != "avg"]


def mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def order_languages(task: str, langs) -> list[str]:
    """Languages in the task's official order (English first), unknown ones last."""
    official = TASKS[task].languages if task in TASKS else ()
    langs = list(dict.fromkeys(langs))
    return [lang for lang in official if lang in langs] + sorted(
        lang for lang in langs if lang not in official
    )


@dataclass
class Reference:
    """What a ``reference=`` points at: a results dict to compare with and/or a checkpoint to run."""

    label: str
    results: dict | None = None
    ckpt: str | None = None


def find_ckpt(path: Path) -> Path | None:
    """``path`` if it is a file, else its checkpoints/best.ckpt (or last.ckpt), else None."""
    if path.is_file():
        return path
    for name in CKPT_NAMES:
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    return None


def resolve_reference(ref: str | Path | None) -> Reference | None:
    """``reference=``: a results.json, a run dir (its results.json and checkpoint) or a .ckpt."""
    if ref in (None, ""):
        return None
    path = Path(str(ref))
    if not path.exists():
        raise SdqConfigError(
            f"reference={path} does not exist; pass a teacher run dir, its results.json or a .ckpt"
        )
    if path.is_file() and path.suffix == ".json":
        return Reference(str(path), results=load_results(path))
    results = load_results(path) if (path.is_dir() and (path / RESULTS_FILE).is_file()) else None
    ckpt = find_ckpt(path)
    if results is None and ckpt is None:
        raise SdqConfigError(
            f"reference={path} holds neither {RESULTS_FILE} nor checkpoints/best.ckpt; "
            "pass a finished run dir"
        )
    return Reference(str(path), results=results, ckpt=str(ckpt) if ckpt else None)
