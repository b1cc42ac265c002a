"""Which part of a quantization scheme costs fidelity: each difference between sdq's presets and the peers'
schemes (weight granularity, quantized embeddings, activation granularity) applied alone to the FP teacher,
calibrated as train.py calibrates (16 task batches + 128 multilingual pseudo pairs), no training step,
and evaluated against the teacher on the test set (agreement, KL, worst language, accuracy). The first
case, a bf16 copy of the teacher, measures how many predictions any small perturbation flips.

    python benchmarks/scheme_ablation.py --limit-eval 100 data.val_languages=[en]    # me5_small, XNLI
    python benchmarks/scheme_ablation.py --limit-eval 100 --cases 'w8|emb only|a8 only' data.val_languages=[en]
    python benchmarks/scheme_ablation.py --model tiny --task sib200 --limit-eval 2 --teacher init
"""

from __future__ import annotations

import argparse
import sys

import torch
from peer_students import Bench
from peers_qat import REPO, compose, evaluate, setup

_FP_EMB = "quant.embedding=null"
_G = "quant.weight.granularity=group"
FLOOR = "bf16 copy of the teacher, no quantization (floor)"
CASES: dict[str, list[str]] = {  # Hydra overrides of each case
    FLOOR: [],  # how many predictions any small perturbation flips: the noise floor of agreement
    "w4a8 (preset: per-channel W, 4-bit emb)": ["quant=w4a8"],
    "w4a8, FP emb": ["quant=w4a8", _FP_EMB],
    "w4a8, group-128 W, FP emb": ["quant=w4a8", _G, "+quant.weight.group_size=128", _FP_EMB],
    "w4a8, group-32 W, FP emb": ["quant=w4a8", _G, "+quant.weight.group_size=32", _FP_EMB],
    "w4 weights only, FP emb": ["quant=w4a8", "quant.act=null", _FP_EMB],
    "4-bit emb only": ["quant=w4a8", "quant.weight=null", "quant.act=null"],
    "a8 only, static per channel (sdq)": ["quant=w8a8", "quant.weight=null", _FP_EMB],
    "a8 only, static per tensor (as ModelOpt INT8)": ["quant=w8a8", "quant.weight=null", _FP_EMB,
                                                      "quant.act.granularity=tensor"],
    "w2a8_lsq (preset: per-channel W, MSE-initialised steps)": ["quant=w2a8_lsq"],
    "w2a8_lsq, group-32 W": ["quant=w2a8_lsq", _G, "+quant.weight.group_size=32"],
    "w8a8 (preset: 8-bit emb, static per-channel act)": ["quant=w8a8"],
    "w8a8, FP emb": ["quant=w8a8", _FP_EMB],
    "w8 weights only, FP emb": ["quant=w8a8", "quant.act=null", _FP_EMB],
    "w8 weights only, group-32, FP emb": ["quant=w8a8", "quant.act=null", _FP_EMB, _G, "+quant.weight.group_size=32"],
    "w8a8, group-32 W": ["quant=w8a8", _G, "+quant.weight.group_size=32"],
    "8-bit emb only": ["quant=w8a8", "quant.weight=null", "quant.act=null"],
    "a8 only, per channel, MSE ranges": ["quant=w8a8", "quant.weight=null", _FP_EMB, "quant.act.observer=mse"],
    "a8 only, per channel, 99.99th percentile": ["quant=w8a8", "quant.weight=null", _FP_EMB,
                                                 "quant.act.observer=percentile"],
}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small")
    ap.add_argument("--task", default="xnli")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mini-xglue"))
    ap.add_argument("--teacher", default="auto", help="auto (train.py's cached teacher) | init | a .safetensors")
    ap.add_argument("--limit-eval", type=int, default=None, help="test examples per language (default: all)")
    ap.add_argument("--cases", default="",
                    help="texts separated by |: run only the cases whose name contains one, e.g. 'w8|a8 only'")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("overrides", nargs="*", help="more train.py (Hydra) overrides, e.g. data.val_languages=[en]")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p for p in args.cases.split("|") if p]
    cases = {name: case for name, case in CASES.items() if not parts or any(p in name for p in parts)}
    if not cases:  # before any model loads
        print(f"error: no case matches --cases {args.cases!r}; cases: " + "; ".join(CASES), file=sys.stderr)
        raise SystemExit(2)

    from sdq.calib import calibrate
    from sdq.config import quant_dict
    from sdq.errors import SdqConfigError
    from sdq.lit.evaluation import aggregate
    from sdq.quant import QuantConfig, prepare

    overrides, settings, dm, tokenizer, teacher = setup(args, [])
    bench = Bench.build(lambda extra: compose(overrides + extra), dm, tokenizer, teacher, [], 0.0,
                        settings.student.weight_decay, settings.student.warmup_ratio, settings.student.freeze_embeddings)
    n = sum(len(b["labels"]) for bs in bench.test.values() for b in bs)
    print(f"{args.model} on {args.task}: {n} test examples in {len(bench.test)} languages, no training step")
    out = {}
    for name, case in cases.items():
        student = bench.copy_teacher()
        if name == FLOOR:
            student.to(torch.bfloat16)
        else:
            try:
                prepare(student, QuantConfig.from_dict(quant_dict(bench.compose(case))))
            except SdqConfigError as why:  # e.g. a group size that does not divide a small model's widths
                print(f"{name:<48} skipped: {why}")
                continue
            calibrate(student, bench.calib, len(bench.calib))
        per_lang = evaluate(student, bench)
        worst = min(per_lang, key=lambda lang: per_lang[lang]["agree"])
        out[name] = {**aggregate(per_lang), "worst": f"{worst} {per_lang[worst]['agree']:.2f}"}
        r = out[name]
        print(f"{name:<48} agree {r['agree']:6.2f}  KL {r['kl']:.4f}  worst {r['worst']:>10}  "
              f"acc {r['metric']:.2f} ({r['metric'] - r['teacher_metric']:+.2f})", flush=True)
    return out


if __name__ == "__main__":
    main()
