"""Training-step cost of a quantized method vs full-precision fine-tuning, measured side by side.

Both steps go through the same ``SDQModule.training_step`` + backward + AdamW step that
``train.py`` runs: the FP step trains the plain model with cross-entropy (``method=fp``); the
SDQ step runs the frozen FP teacher forward, the fake-quantized student forward/backward and
the method's losses (default ``method=sdq quant=w8a8``: CE + logits KL + self-attention output
MSE at every layer), with the method's ``student_dropout`` as ``train.py`` applies it. Steps are
timed round-robin (FP, FP without dropout, SDQ, ...) after warm-up, so load from other processes hits both
alike; the ratio of medians is printed, against FP fine-tuning as ``method=fp`` runs it (the
model's dropout) and against FP without dropout (the students' setting: like for like).

    python benchmarks/train_overhead.py                          # me5_small, batch 32 x 128, CPU
    python benchmarks/train_overhead.py --method qat --quant w4a8 --steps 5
    python benchmarks/train_overhead.py --model tiny --steps 3   # quick check
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch


def compose(method: str, quant: str, model: str):
    """The Hydra config ``train.py`` would compose for these choices."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from sdq.config import resolve_config

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hcompose("config", overrides=[f"method={method}", f"quant={quant}", f"model={model}", "task=xnli"])
    return resolve_config(cfg)


def make_module(model, teacher, loss, lr: float = 2e-5):
    """An ``SDQModule`` with an AdamW over the student's trainable parameters (no Trainer needed)."""
    from sdq.lit.module import SDQModule, TaskInfo

    module = SDQModule(model, teacher, loss, TaskInfo("xnli", "seq_cls", "acc", ("a", "b", "c")),
                       ["en"], ["en"], lr=lr, freeze_embeddings=True)
    module.log = lambda *a, **k: None  # no Trainer: metrics are not the point here
    params = [p for p in module.student.parameters() if p.requires_grad]
    return module, torch.optim.AdamW(params, lr=lr)


def step(module, opt, batch) -> float:
    """One optimisation step; returns its wall time in seconds."""
    t0 = time.perf_counter()
    loss = module.training_step(batch, 0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small")
    ap.add_argument("--method", default="sdq")
    ap.add_argument("--quant", default="w8a8")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import hydra

    from sdq.config import quant_dict
    from sdq.models import build_model, resolve_backbone, set_dropout
    from sdq.quant import QuantConfig, prepare
    from sdq.teacher import calibrate

    cfg = compose(args.method, args.quant, args.model)
    backbone = resolve_backbone(cfg.model.name_or_path)
    fp_model = build_model(backbone, "seq_cls", 3)
    vocab = fp_model.config.vocab_size
    B, T = args.batch_size, args.seq_len
    batches = [
        {"input_ids": torch.randint(5, vocab, (B, T)), "attention_mask": torch.ones(B, T, dtype=torch.long),
         "labels": torch.randint(0, 3, (B,))}
        for _ in range(4)
    ]

    teacher = copy.deepcopy(fp_model)
    student = copy.deepcopy(fp_model)
    if cfg.method.get("student_dropout") is not None:  # as train.py does (conf/method/ptq.yaml)
        set_dropout(student, float(cfg.method.student_dropout))
    report = prepare(student, QuantConfig.from_dict(quant_dict(cfg)))
    calibrate(student, batches, 2, learn=True)
    fp_loss = hydra.utils.instantiate({"_target_": "sdq.distill.DistillLoss", "ce": 1.0})
    q_loss = hydra.utils.instantiate(cfg.method.loss)
    fp_nodrop = copy.deepcopy(fp_model)
    set_dropout(fp_nodrop, 0.0)  # like for like when the student runs without dropout (SDPA's fast path)
    variants = {"fp": make_module(fp_model, None, fp_loss), "fp_nodrop": make_module(fp_nodrop, None, fp_loss),
                args.method: make_module(student, teacher, q_loss)}

    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.steps + 1):  # round-robin; step 0 is warm-up
        for name, (module, opt) in variants.items():
            t = step(module, opt, batches[i % len(batches)])
            if i > 0:
                times[name].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} batch={B}x{T} threads={args.threads} steps={args.steps} "
          f"quant={args.quant} ({report.effective_bits:.2f} bits/param) loss={q_loss.weights}")
    for name, v in times.items():
        print(f"  {name:>8}: median {med[name] * 1e3:8.1f} ms/step  (min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f})")
    ratio = med[args.method] / med["fp"]
    print(f"{args.method}/fp step ratio: {ratio:.2f}x")
    print(f"{args.method}/fp_nodrop step ratio: {med[args.method] / med['fp_nodrop']:.2f}x  (FP without dropout)")
    return ratio


if __name__ == "__main__":
    main()
