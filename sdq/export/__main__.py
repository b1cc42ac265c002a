"""``python -m sdq.export ckpt=<run dir or student ckpt> out=<dir> [onnx=auto|true|false] [check=true|test|false]
[batches=8] [tol=0.1] [backend=int8|onnx|torch] [hf_copy=auto|true|false]`` (Hydra overrides; ``--help`` lists them).

``ckpt=<run dir>`` takes its ``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``. The export dir carries
the run's tokenizer, label names and a model card, and a transformers-loadable copy when it reproduces the
student (``hf_copy``, see :mod:`sdq.export.hf_copy`; measured on the check's batches).

Packs the checkpoint's fake-quantized student (``sdq.lit.restore.load_student``), prints the size table
per module kind and the whole-model ratio, then evaluates the exported model (``backend=int8`` by default when activations are quantized: torch
int8 GEMMs, bit-identical to the student; ``onnx``: the int8 onnxruntime model; ``torch``: dequantized
weights only) and the student on the same dev batches of the run's task
(``batches`` of them): max logit difference and accuracy difference; exit status 2 (one ``error:`` line)
when the accuracy differs by more than ``tol`` points. ``check=test``: the same on the task's whole TEST
split of every language, per-language table (see :mod:`sdq.export.accuracy`), error when any language
differs by more than ``tol`` points (``batches`` is then ignored).

The config is the dataclass :class:`ExportConfig` in Hydra's ConfigStore (the repo's conf/ dir is not
part of the installed package). In Python: ``main(["ckpt=...", "out=..."])``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sdq.cli import guarded, run_hydra, run_overrides
from sdq.errors import SdqConfigError

USAGE = "usage: python -m sdq.export ckpt=<run dir or .ckpt> out=<dir> [onnx=auto] [check=true]"
HELP = """python -m sdq.export: pack a trained student's quantized weights (int8 / ONNX) and check it agrees.

  python -m sdq.export ckpt=<run dir> out=<dir> [onnx=auto|true|false]
      [check=true|test|false] [batches=8] [tol=0.1] [backend=int8|onnx|torch] [hf_copy=auto|true|false]

  ckpt     a run dir (its checkpoints/best.ckpt, else last.ckpt) or a student .ckpt (required)
  out      the export dir (required): weights, tokenizer, model card, model.onnx, export_report.json
  onnx     write the int8 ONNX model: auto (when onnx + onnxruntime are installed) | true | false
  check    true: student vs export on `batches` dev batches | test: every language's test split | false
  batches  dev batches of check=true
  tol      allowed accuracy difference (points); more exits 2
  backend  what check runs: int8 | onnx | torch; null = int8 when exact, else onnx, else torch
  hf_copy  model.safetensors for plain transformers: auto (weight-only, or >= 99 % agreement with the
           student on the check's batches) | true | false
Exit status: 0 ok, 2 bad input or the exported model differs by more than tol.

== Config (override any key: key=value) ==
$CONFIG"""


@dataclass
class ExportConfig:
    """``python -m sdq.export`` keys (see :data:`HELP`)."""

    ckpt: str | None = None
    out: str | None = None
    onnx: Any = "auto"
    check: Any = True
    batches: int = 8
    tol: float = 0.1
    backend: str | None = None
    hf_copy: Any = "auto"
    # no run dir, log file or .hydra/ of its own: the export writes only into out=
    hydra: Any = field(default_factory=lambda: {"run": {"dir": "."}, "output_subdir": None, "help": {"template": HELP}})
    defaults: list[Any] = field(default_factory=lambda: [
        "_self_", {"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}])


ConfigStore.instance().store(name="sdq_export", node=ExportConfig)


def parse_args(cfg: DictConfig | dict) -> dict:
    """The composed config -> checked plain dict (``check``: true/test/false, ``onnx``: auto/True/False);
    SdqConfigError on a missing or invalid value."""
    args = {k: v for k, v in (OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)).items()
            if k not in ("hydra", "defaults")}
    for key in ("ckpt", "out"):
        if not args[key]:
            raise SdqConfigError(f"{key}= is required; {USAGE}")
    check = {True: "true", False: "false", "true": "true", "false": "false", "test": "test"}.get(args["check"])
    if check is None:
        raise SdqConfigError(f"check={args['check']} must be true (dev batches), test (every language) or false")
    args["check"] = check
    from sdq.export.loader import BACKENDS

    if args["backend"] is not None and args["backend"] not in BACKENDS:
        raise SdqConfigError(f"backend={args['backend']} must be one of: {', '.join(BACKENDS)}")
    onnx = {"auto": "auto", True: True, False: False, "true": True, "false": False}.get(args["onnx"])
    if onnx is None:
        raise SdqConfigError(f"onnx={args['onnx']} must be auto, true or false")
    args["onnx"] = onnx
    hf_copy = {"auto": "auto", True: True, False: False, "true": True, "false": False}.get(args["hf_copy"])
    if hf_copy is None:
        raise SdqConfigError(f"hf_copy={args['hf_copy']} must be auto, true or false")
    args["hf_copy"] = hf_copy
    return args


def default_backend(report) -> str:
    """int8 (bit-identical to the student) when the export quantizes Linear inputs and no attention
    internals; else the ONNX model when written; else torch (dequantized weights)."""
    if report.quantized_inputs and not report.attention_quantized:
        return "int8"
    return "onnx" if report.onnx else "torch"


def dev_batches(ckpt: str, n: int) -> list[dict]:
    """The first ``n`` dev batches (first dev language) of the checkpoint's task and data settings."""
    from sdq.export.accuracy import task_batches

    per_lang = task_batches(ckpt, split="dev", limit_batches=n)
    first = next(iter(per_lang.values()), [])
    return [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "labels")} for b in first]


def check_test_split(student, report, args: dict, batches: dict, info) -> dict:
    """Student vs export on every language's test split; writes the report, then SdqError beyond ``tol``."""
    from sdq.errors import SdqError
    from sdq.export import load_quantized
    from sdq.export.accuracy import evaluate_languages, format_table, verdict

    backend = args["backend"] or default_backend(report)
    models = {"student": student, f"exported_{backend}": load_quantized(args["out"], backend=backend)}
    res = evaluate_languages(models, batches, head=info.kind, metric=info.metric, label_names=tuple(info.labels),
                             reference="student")
    print(format_table(res, reference="student", metric=info.metric))
    v = verdict(res, ours=f"exported_{backend}", reference="student", tol=args["tol"])
    agreement = {"backend": backend, "split": "test", "per_language": res[f"exported_{backend}"],
                 "student": res["student"], "verdict": v}
    if not v["ok"]:
        report.agreement = agreement
        (Path(args["out"]) / "export_report.json").write_text(json.dumps(report.to_dict(), indent=1))
        raise SdqError(f"exported model differs from the student by more than {args['tol']} pt on "
                       f"{', '.join(v['over_tol'])} (worst {v['worst_lang']} {v['worst_diff']:+.2f} pt); see "
                       f"{Path(args['out']) / 'export_report.json'}")
    print(f"exported model within {args['tol']} pt of the student on every language "
          f"(worst {v['worst_lang']} {v['worst_diff']:+.2f} pt)")
    return agreement


@guarded
def export(cfg: DictConfig | dict) -> dict:
    """Export and check as the config says; returns the export report as a dict."""
    from sdq.export import check_agreement, export_quantized, load_quantized
    from sdq.export.accuracy import task_batches
    from sdq.export.run_info import resolve_ckpt, run_info
    from sdq.lit.quiet import quiet_lightning
    from sdq.lit.restore import load_student
    from sdq.models import load_tokenizer, resolve_backbone

    quiet_lightning()  # the same muted noise as train.py (transformers' "not sharded" on every load)
    args = parse_args(cfg)
    args["ckpt"] = str(resolve_ckpt(args["ckpt"]))
    student = load_student(args["ckpt"])
    info = run_info(args["ckpt"], num_labels=student.config.num_labels)
    tokenizer = load_tokenizer(resolve_backbone(info.model))
    test = task_batches(args["ckpt"], "test") if args["check"] == "test" else None
    dev = dev_batches(args["ckpt"], args["batches"]) if args["check"] == "true" and args["batches"] > 0 else None
    checked = [b for lang in test.values() for b in lang] if test else dev
    report = export_quantized(student, args["out"], onnx=args["onnx"], labels=info.labels, tokenizer=tokenizer,
                              hf_copy=args["hf_copy"], check_batches=checked, info=info)
    print(report, flush=True)
    if test:
        report.agreement = check_test_split(student, report, args, test, info)
    elif dev:
        backend = args["backend"] or default_backend(report)
        exported = load_quantized(args["out"], backend=backend)
        res = check_agreement(student, exported, dev, tol=args["tol"])
        report.agreement = {"backend": backend, **res}
        print(f"agreement ({backend}): max logit diff {res['max_logit_diff']:.3g}, accuracy exported "
              f"{res['exported']:.2f} vs student {res['student']:.2f} ({res['metric_diff']:+.2f} pt, "
              f"tol {res['tol']}) on {res['examples']} examples")
    (Path(args["out"]) / "export_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report.to_dict()


@hydra.main(version_base="1.3", config_path=None, config_name="sdq_export")
def _cli(cfg: DictConfig) -> dict:
    return export(cfg)


def main(argv: list[str] | None = None) -> dict | None:
    """The command line (``argv=None``), or the same overrides composed in-process (tests, notebooks)."""
    return run_hydra(_cli) if argv is None else run_overrides("sdq_export", export, argv)


if __name__ == "__main__":
    main()
