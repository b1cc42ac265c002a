"""sdq beside the QAT tools a user would pick instead (torchao QAT, NVIDIA ModelOpt QAT and QAD), from one
FP teacher, on the same training batches, optimizer steps, schedule, batch size and test set.

Every row starts from a copy of the teacher (the cached stage-1 teacher ``train.py`` uses), trains ``--steps``
AdamW steps with train.py's schedule (linear warm-up 10 %, linear decay, weight decay 0.01, word embeddings
frozen as the task's recipe says, no dropout in any student) on the very same batches, and is evaluated on
every test language against the teacher: accuracy, agreement (same prediction), KL(teacher || student) and
the worst language's agreement. Step time is each row's median step over an FP fine-tuning step's median,
measured in the same run; size is the file each tool's own save path writes. The rows are listed in
``peer_students.py``; ``--rows`` picks some by name.

    pip install -e ".[peers]"
    python benchmarks/peers_qat.py --out peers_xnli.json                   # me5_small, mini-xglue XNLI
    python benchmarks/peers_qat.py --rows "torchao qat,sdq" --bits W4A8
    python benchmarks/peers_qat.py --model tiny --task sib200 --steps 2 --limit-eval 4 --teacher init
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from peer_students import ROWS, Bench, SkipRow, Student, file_bytes, training_batches

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    """The Hydra config ``train.py`` composes for these overrides, resolved and checked."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from sdq.config import resolve_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return resolve_config(hcompose("config", overrides=overrides))


def load_teacher(cfg, dm, backbone: str, how: str) -> torch.nn.Module:
    """``auto``: the stage-1 teacher train.py would use (cached; fine-tuned once if missing); ``init``: the
    pretrained model with a fresh head (smoke runs); else a ``teacher.safetensors`` path."""
    from sdq.config import plain_config
    from sdq.lit.settings import RunSettings
    from sdq.models import build_model
    from sdq.teacher import finetune_teacher, load_weights, obtain_teacher

    teacher = build_model(backbone, dm.head, dm.num_labels)
    if how == "init":
        return teacher.eval()
    if how == "auto":
        s = RunSettings.from_config(cfg)
        how = obtain_teacher(s.teacher, lambda: finetune_teacher(
            backbone, dm, Path(cfg.paths.output_dir) / "teacher", s.teacher, s.lightning, cfg.model.name,
            plain_config(cfg)))
    load_weights(teacher, how)
    return teacher.eval()


def setup(args, extra: list[str]):
    """The overrides, settings, datamodule, tokenizer and teacher of a bench run from
    ``--model --task --data-root --limit-eval --teacher`` and positional overrides."""
    from sdq.lit.quiet import quiet_lightning
    from sdq.lit.settings import RunSettings
    from sdq.lit.stage import datamodule
    from sdq.models import load_tokenizer, resolve_backbone

    quiet_lightning()
    overrides = [f"model={args.model}", f"task={args.task}", *extra]
    if args.task != "sib200":
        overrides.append(f"data.root={args.data_root}")
    overrides += args.overrides
    teacher_cfg = compose(overrides)  # train.py's teacher (its cache key holds data.limit_eval: none there)
    if args.limit_eval:
        overrides.append(f"data.limit_eval={args.limit_eval}")
    cfg = compose(overrides)
    torch.manual_seed(int(cfg.seed))
    backbone = resolve_backbone(cfg.model.name_or_path)
    tokenizer = load_tokenizer(backbone)
    settings = RunSettings.from_config(cfg)
    dm = datamodule(settings.data, tokenizer)
    return overrides, settings, dm, tokenizer, load_teacher(teacher_cfg, dm, backbone, args.teacher)


def train(student: Student, batches: list[dict], lr: float, weight_decay: float, warmup: float) -> list[float]:
    """train.py's AdamW + linear schedule over ``batches``, one step each; returns the step times (s)."""
    from sdq.lit.optim import build_optimizer

    opt = build_optimizer(student.trained, lr, weight_decay, warmup, len(batches))
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    student.model.train()
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        loss = student.loss(batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def evaluate(model: torch.nn.Module, bench: Bench) -> dict[str, dict[str, float]]:
    """Per test language: metric, teacher metric, agreement (%) and mean KL(teacher || student)."""
    from sdq.calib.calibrate import INPUT_KEYS
    from sdq.lit.evaluation import LanguageAccumulator

    model.eval()
    out = {}
    for lang, batches in bench.test.items():
        acc = LanguageAccumulator(bench.head)
        for batch, t_logits in zip(batches, bench.teacher_logits[lang]):
            logits = model(**{k: v for k, v in batch.items() if k in INPUT_KEYS}).logits.float()
            acc.add(logits, batch["labels"], teacher_logits=t_logits)
        out[lang] = acc.summary(bench.metric)
    return out


def fp_step_time(bench: Bench, n: int) -> float:
    """Median step of FP fine-tuning (method=fp: CE, the model's dropout) on a copy of the teacher."""
    from sdq.distill import DistillLoss
    from sdq.lit.module import SDQModule

    model = copy.deepcopy(bench.teacher)
    module = SDQModule(model, None, DistillLoss(ce=1.0), bench.task_info, [], [],
                       freeze_embeddings=bench.freeze_embeddings)
    module.log = lambda *a, **k: None
    student = Student(model, lambda b: module.training_step(b, 0))
    times = train(student, bench.batches[: n + 1], bench.lr, bench.weight_decay, bench.warmup)
    return statistics.median(times[1:] or times)


def summarize(name: str, bits: str, scheme: str, per_lang: dict, times: list[float], fp_step: float,
              size: int, wall: float) -> dict:
    from sdq.lit.evaluation import aggregate

    avg = aggregate(per_lang)
    worst = min(per_lang, key=lambda lang: per_lang[lang]["agree"])
    return {"row": name, "bits": bits, "scheme": scheme, "acc": avg["metric"],
            "delta": avg["metric"] - avg["teacher_metric"], "agree": avg["agree"], "kl": avg["kl"],
            "worst": f"{worst} {per_lang[worst]['agree']:.2f}", "step_ratio": statistics.median(times) / fp_step,
            "bytes": size, "wall_s": wall, "per_language": per_lang}


def print_table(rows: list[dict], teacher: dict) -> None:
    print(f"\nteacher: {teacher['metric']:.2f} avg, {teacher['bytes'] / 1e6:.1f} MB; FP step "
          f"{teacher['fp_step_s'] * 1e3:.0f} ms")
    head = f"{'method':<24} {'bits':<5} {'acc':>6} {'Δ':>6} {'agree':>6} {'KL':>7} {'worst':>10} {'step':>5} " \
           f"{'MB':>6}  scheme"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['row']:<24} {r['bits']:<5} {r['acc']:6.2f} {r['delta']:+6.2f} {r['agree']:6.2f} "
              f"{r['kl']:7.4f} {r['worst']:>10} {r['step_ratio']:4.2f}x {r['bytes'] / 1e6:6.1f}  {r['scheme']}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small")
    ap.add_argument("--task", default="xnli")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mini-xglue"))
    ap.add_argument("--teacher", default="auto", help="auto (train.py's cached teacher) | init | a .safetensors")
    ap.add_argument("--steps", type=int, default=141, help="optimizer steps of every row (141 = 3 XNLI epochs)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bits", default="W8A8,W4A8", help="which bit widths' rows")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--limit-eval", type=int, default=None, help="test examples per language (default: all)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="write every row's figures, per language, to this JSON")
    ap.add_argument("overrides", nargs="*", help="more train.py (Hydra) overrides, e.g. data.val_languages=[en]")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    bits = [b.strip().upper() for b in args.bits.split(",")]
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    rows = [r for r in ROWS if r.bits in bits and (not wanted or r.name in wanted)]
    if not rows:
        print(f"error: no row matches --rows {args.rows!r} --bits {args.bits!r}; rows: "
              + ", ".join(sorted({r.name for r in ROWS})), file=sys.stderr)
        raise SystemExit(2)
    overrides, settings, dm, tokenizer, teacher = setup(args, [f"data.batch_size={args.batch_size}"])
    bench = Bench.build(lambda extra: compose(overrides + extra), dm, tokenizer, teacher,
                        training_batches(dm, args.steps), args.lr, settings.student.weight_decay,
                        settings.student.warmup_ratio, settings.student.freeze_embeddings)
    print(f"{args.model} on {args.task}: {len(bench.batches)} steps of {args.batch_size}, lr {args.lr}, "
          f"{sum(len(b['labels']) for bs in bench.test.values() for b in bs)} test examples in "
          f"{len(bench.test)} languages, {args.threads} threads")
    fp_step = fp_step_time(bench, min(8, args.steps))
    teacher_row = {"metric": bench.teacher_eval["metric"], "bytes": file_bytes(teacher.state_dict()),
                   "fp_step_s": fp_step}
    results = []
    for row in rows:
        t0 = time.perf_counter()
        try:
            student = row.build(bench)
        except SkipRow as why:
            print(f"  {row.name} {row.bits}: skipped ({why})")
            continue
        times = train(student, student.batches or bench.batches, bench.lr, bench.weight_decay, bench.warmup)
        model, size = student.finish()
        per_lang = evaluate(model, bench)
        results.append(summarize(row.name, row.bits, row.scheme, per_lang, times, fp_step, size,
                                 time.perf_counter() - t0))
        r = results[-1]
        print(f"  {row.name} {row.bits}: acc {r['acc']:.2f} agree {r['agree']:.2f} ({r['wall_s']:.0f} s)", flush=True)
        if args.out:  # after every row: a long run that stops early keeps what it measured
            Path(args.out).write_text(json.dumps({"args": vars(args), "teacher": teacher_row,
                                                  "teacher_per_language": bench.teacher_per_lang, "rows": results},
                                                 indent=1))
    print_table(results, teacher_row)
    return results


if __name__ == "__main__":
    main()
