"""Per-language accuracy of the exported int8 model vs the fake-quantized student and the int8 peers.

One run, the same test examples of every language for every model (built as the training run built
them, from the checkpoint's stored config): the fake-quantized student (reference); our export of it,
run in torch with int8 GEMMs (``backend=int8``, bit-identical to the student) and as the static int8
onnxruntime model (``backend=onnx``, faster, its own float rounding); the FP teacher; and what a user would do instead, applied to the
FP teacher: onnxruntime ``quantize_dynamic`` int8 on its plain ONNX export and torch ``quantize_dynamic``.
Prints both per-language tables, the cross-check with the run's results.json and the verdict: ours within
``--tol`` points of the student on every language, and an average at least each peer's. ``--noise-floor``
adds the same fake-quantized student run with eager attention and in float64: how far the student moves
under float-rounding-sized changes alone (the floor of any non-bit-exact implementation).

    python benchmarks/export_accuracy.py --ckpt <ptq run>/checkpoints/last.ckpt --out /tmp/export_w8a8
    python benchmarks/export_accuracy.py --ckpt ... --languages en,de --limit-batches 2   # quick look
    python benchmarks/export_accuracy.py --ckpt ... --out ... --reuse --skip-peers --noise-floor
    python benchmarks/export_accuracy.py --ckpt ... --out ... --compile    # + int8 with compiled input codes
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch

PEERS = ("ort_dynamic_int8", "torch_dynamic_int8")


def load_teacher(ckpt: Path) -> torch.nn.Module:
    """The run's FP teacher: ``teacher.*`` weights of the checkpoint, else its recorded teacher file."""
    from sdq.lit.restore import build_from_config, checkpoint_config, load_student, read_checkpoint
    from sdq.teacher import load_weights

    raw = read_checkpoint(ckpt)
    if any(k.startswith("teacher.") for k in raw["state_dict"]):
        del raw
        return load_student(ckpt, prefix="teacher.")
    path = (raw.get("sdq") or {}).get("teacher_ckpt")
    if not path:
        raise SystemExit(f"error: {ckpt} holds no teacher weights nor teacher_ckpt; evaluate a run that had a teacher")
    teacher = build_from_config(checkpoint_config(raw), quantize=False)
    load_weights(teacher, path)
    return teacher.eval()


def cross_check(res: dict, run_results: Path, task: str, split: str) -> str:
    """Max |diff| between the recomputed student/teacher metrics and the run's own results.json (4 decimals)."""
    if not run_results.is_file():
        return f"no {run_results}: no cross-check with the run's own evaluation"
    saved = json.loads(run_results.read_text())
    lines = []
    for name, table in (("student", saved.get(task, {})), ("teacher_fp32", saved.get("teacher", {}).get(task, {}))):
        if name not in res:
            continue
        per_lang = table.get(split, {})
        diffs = [abs(per_lang[lang] - v["metric"]) for lang, v in res[name].items() if lang in per_lang]
        if diffs:
            lines.append(f"{name}: recomputed {split} {len(diffs)} languages + avg vs {run_results}: "
                         f"max |diff| {max(diffs):.4f} pt")
    return "\n".join(lines) or f"{run_results} has no {task}/{split} metrics"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="sdq checkpoint of a W8A8 student (PTQ: <run>/checkpoints/last.ckpt)")
    ap.add_argument("--out", required=True, help="export dir (written; peers go to <out>/peers)")
    ap.add_argument("--reuse", action="store_true", help="keep an existing, verified export in --out")
    ap.add_argument("--split", default="test", choices=("test", "dev"))
    ap.add_argument("--languages", default=None, help="comma-separated subset (default: every language)")
    ap.add_argument("--limit-batches", type=int, default=None, help="first N eval batches per language")
    ap.add_argument("--data-root", default=None, help="override the run's data.root")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.1, help="max |accuracy diff| vs the student, points")
    ap.add_argument("--skip-peers", action="store_true", help="no FP teacher, no int8 peers")
    ap.add_argument("--compile", action="store_true",
                    help="also the int8 backend with its input quantization compiled (load_quantized compile=True)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also the student with eager attention and in float64 (float-order sensitivity)")
    ap.add_argument("--json", default=None, help="also write every figure here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    import onnx

    from sdq.data.tasks import get_task
    from sdq.errors import SdqError
    from sdq.export import export_quantized, load_quantized, verify_dir
    from sdq.export.accuracy import evaluate_languages, format_table, task_batches, verdict
    from sdq.export.ort_model import OrtModel, s8_weights_to_u8
    from sdq.export.peers import ort_dynamic_int8, torch_dynamic_int8
    from sdq.int8 import cpu_has_vnni
    from sdq.lit.restore import checkpoint_config, load_student

    t0 = time.time()
    ckpt, out = Path(args.ckpt), Path(args.out)
    cfg = checkpoint_config(ckpt)
    spec = get_task(cfg.task.name)
    student = load_student(ckpt)
    reused = False
    if args.reuse:
        try:
            verify_dir(out, need=("sdq_export.json", "sdq_packed.safetensors", "model.onnx"))
            reused = True
        except SdqError:
            pass
    if not reused:
        report = export_quantized(student, out, onnx=True)
        print(f"[{time.time() - t0:5.0f}s] {report}", flush=True)
    models = {"student": student, "ours_int8_torch": load_quantized(out, backend="int8"),
              "ours_int8_onnx": load_quantized(out, backend="onnx")}
    if args.compile:
        models["ours_int8_torch_compiled"] = load_quantized(out, backend="int8", compile=True)
    if not cpu_has_vnni() and s8_weights_to_u8(onnx.load(str(out / "model.onnx"))):
        # ours_int8_onnx runs 8-bit weights as uint8 here (exact integer GEMMs): also ORT's u8 x s8 as written
        models["ours_int8_onnx_s8"] = OrtModel(out / "model.onnx", threads=args.threads, u8_weights=False)
    if args.noise_floor:
        models["student_eager_attn"] = copy.deepcopy(student)
        models["student_eager_attn"].set_attn_implementation("eager")
        models["student_fp64"] = copy.deepcopy(student).double()
    if not args.skip_peers:
        teacher = load_teacher(ckpt)
        models["teacher_fp32"] = teacher
        models["ort_dynamic_int8"] = OrtModel(ort_dynamic_int8(teacher, out / "peers" / "ort_dynamic.onnx"),
                                              threads=args.threads, u8_weights=False)  # the tool's default
        models["torch_dynamic_int8"] = torch_dynamic_int8(teacher)
    langs = args.languages.split(",") if args.languages else None
    batches = task_batches(ckpt, args.split, langs, args.limit_batches, args.data_root)
    n = sum(len(b["labels"]) for bs in batches.values() for b in bs)
    print(f"[{time.time() - t0:5.0f}s] models ready; {spec.name} {args.split}: {len(batches)} languages, "
          f"{n} examples, {args.threads} threads", flush=True)
    def progress(lang: str, figs: dict) -> None:
        print(f"[{time.time() - t0:5.0f}s] {lang}: " + ", ".join(f"{k} {v['metric']:.2f}" for k, v in figs.items()),
              flush=True)

    res = evaluate_languages(models, batches, head=spec.kind, metric=spec.metric, label_names=tuple(spec.labels),
                             reference="student", on_language=progress)
    print(f"[{time.time() - t0:5.0f}s] evaluated\n")
    print(format_table(res, reference="student", metric=spec.metric))
    print()
    if args.limit_batches is None and langs is None:
        print(cross_check(res, ckpt.parent.parent / "results.json", spec.name, args.split))
    for twin in ("student_eager_attn", "student_fp64"):
        if twin in res:
            t = verdict(res, ours=twin, reference="student", tol=args.tol)
            print(f"noise floor: {twin} within {args.tol} pt of the student on every language: {t['within_tol']} "
                  f"(worst {t['worst_lang']} {t['worst_diff']:+.2f} pt, {len(t['over_tol'])} languages over tol, "
                  f"agreement {res[twin]['avg']['agree']:.1f}%)")
    peers = [p for p in PEERS if p in res]
    verdicts = {}
    for ours in [m for m in ("ours_int8_torch", "ours_int8_torch_compiled", "ours_int8_onnx") if m in res]:
        v = verdicts[ours] = verdict(res, ours=ours, reference="student", peers=peers, tol=args.tol)
        print(f"{ours} within {args.tol} pt of the student on every language: {v['within_tol']} "
              f"(worst {v['worst_lang']} {v['worst_diff']:+.2f} pt; over tol: {v['over_tol'] or 'none'}; "
              f"agreement {res[ours]['avg']['agree']:.2f}%)")
        for p, ok in v["beats"].items():
            print(f"{ours} avg {res[ours]['avg']['metric']:.2f} >= {p} avg {res[p]['avg']['metric']:.2f}: {ok}")
        print(f"verdict {ours}: {'PASS' if v['ok'] else 'FAIL'}{'' if peers else ' (no peers compared)'}")
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"ckpt": str(ckpt), "split": args.split, "threads": args.threads,
                                               "results": res, "verdicts": verdicts}, indent=1))


if __name__ == "__main__":
    main()
