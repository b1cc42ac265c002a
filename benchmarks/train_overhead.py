"""Training-step cost of quantized methods vs full-precision fine-tuning, measured side by side.

Every step goes through the same ``SDQModule.training_step`` + backward + AdamW step that
``train.py`` runs: the FP step trains the plain model with cross-entropy (``method=fp``); a
quantized step runs the method's losses on the fake-quantized student (``sdq``: the frozen FP
teacher's forward, CE + logits KL + self-attention output MSE at every layer; ``qat``: CE only, no
teacher), with the method's ``student_dropout`` as ``train.py`` applies it. Batches are dynamically
padded (each row a random length in [T/4, T], padded to the longest row of its batch, as the
collator does). Steps are timed round-robin (FP, FP without dropout, each method, ...) after
warm-up, so load from other processes hits all alike; ratios of medians are printed against FP
fine-tuning as ``method=fp`` runs it (the model's dropout) and against FP without dropout (the
students' setting: like for like).

On a GPU (``--device cuda``) every step runs under bf16 autocast as ``trainer=gpu``
(``precision: bf16-mixed``) does, the teacher is cast to bf16 as ``SDQModule`` does on GPU, and
the peak memory of each variant's step is printed beside its time.

    python benchmarks/train_overhead.py                          # me5_small, batch 32 x 128, CPU
    python benchmarks/train_overhead.py --method qat --quant w4a8 --steps 5
    python benchmarks/train_overhead.py --model xlmr_base_random --device cuda --steps 20
    python benchmarks/train_overhead.py --model tiny --steps 3   # quick check
"""

from __future__ import annotations

import argparse
import contextlib
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


def build_fp_model(name: str):
    """The FP classifier (``xlmr_base_random``: xlm-roberta-base's architecture, random init, timing only)."""
    from sdq.models import build_model

    return build_model(name, "seq_cls", 3)


def make_batches(vocab: int, B: int, T: int, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``n`` dynamically padded batches: row lengths uniform in [T/4, T], padded to the batch's longest."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)         # (B,)
        L = int(lengths.max())
        mask = (torch.arange(L)[None, :] < lengths[:, None]).long()              # (B, L)
        ids = torch.randint(5, vocab, (B, L), generator=g) * mask + (1 - mask)   # pad id 1
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device),
                    "labels": torch.randint(0, 3, (B,), generator=g).to(device)})
    return out


def make_module(model, teacher, loss, device: torch.device, lr: float = 2e-5):
    """An ``SDQModule`` on ``device`` with train.py's AdamW over the student's trainable parameters (no Trainer)."""
    from sdq.lit.module import SDQModule, TaskInfo
    from sdq.lit.optim import build_optimizer

    module = SDQModule(model, teacher, loss, TaskInfo("xnli", "seq_cls", "acc", ("a", "b", "c")),
                       ["en"], ["en"], lr=lr, freeze_embeddings=True)
    if not module.needs_teacher:  # fp, qat: CE only, no teacher held at all
        module.teacher = None
    module.to(device)
    module.on_fit_start()  # bf16 teacher on GPU, as in a Trainer run
    module.log = lambda *a, **k: None  # no Trainer: metrics are not the point here
    return module, build_optimizer(module.student, lr, 0.01, 0.0, 1000)["optimizer"]  # train.py's AdamW


def step(module, opt, batch, device: torch.device) -> tuple[float, float]:
    """One optimisation step; returns (wall seconds, peak GiB on the GPU or nan)."""
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with autocast:
        loss = module.training_step(batch, 0)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small", help="me5_small, tiny, xlmr_base_random or a HF dir")
    ap.add_argument("--method", default="sdq,qat", help="comma-separated quantized methods to time beside fp")
    ap.add_argument("--quant", default="w8a8")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 2 warm-ups)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, bf16 teacher)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_overhead: --device cuda but torch sees no GPU; use --device cpu")

    import hydra

    from sdq.calib import calibrate
    from sdq.config import quant_dict
    from sdq.models import set_dropout
    from sdq.quant import QuantConfig, prepare

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    conf_models = Path(__file__).resolve().parents[1] / "conf" / "model"
    # the composed config only names the model (quant and method do not depend on it): a name without a
    # conf/model entry (xlmr_base_random, a HF dir) composes as tiny
    cfg_model = args.model if (conf_models / f"{args.model}.yaml").is_file() else "tiny"
    fp_model = build_fp_model(args.model)
    B, T = args.batch_size, args.seq_len
    batches = make_batches(fp_model.config.vocab_size, B, T, 4, device)

    fp_loss = hydra.utils.instantiate({"_target_": "sdq.distill.DistillLoss", "ce": 1.0})
    fp_nodrop = copy.deepcopy(fp_model)
    set_dropout(fp_nodrop, 0.0)  # like for like when the student runs without dropout (SDPA's fast path)
    variants = {"fp": make_module(copy.deepcopy(fp_model), None, fp_loss, device),
                "fp_nodrop": make_module(fp_nodrop, None, fp_loss, device)}
    bits, losses = {}, {}
    for method in methods:
        cfg = compose(method, args.quant, cfg_model)
        student = copy.deepcopy(fp_model)
        if cfg.method.get("student_dropout") is not None:  # as train.py does (conf/method/ptq.yaml)
            set_dropout(student, float(cfg.method.student_dropout))
        bits[method] = prepare(student, QuantConfig.from_dict(quant_dict(cfg))).effective_bits
        student.to(device)
        calibrate(student, batches, 2, learn=True)
        losses[method] = hydra.utils.instantiate(cfg.method.loss)
        variants[method] = make_module(student, copy.deepcopy(fp_model), losses[method], device)
    del fp_model

    times: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, float] = {k: float("nan") for k in variants}
    for i in range(args.steps + 2):  # round-robin; steps 0-1 are warm-up (allocator, kernels, autotuning)
        for name, (module, opt) in variants.items():
            t, peak = step(module, opt, batches[i % len(batches)], device)
            peaks[name] = peak if i == 0 else max(peaks[name], peak)
            if i > 1:
                times[name].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu threads={args.threads}"
    print(f"model={args.model} batch={B}x{T} (dynamic padding) device={name} steps={args.steps} "
          f"quant={args.quant} ({', '.join(f'{m}: {b:.2f}' for m, b in bits.items())} bits/param)"
          + (" bf16 autocast, bf16 teacher" if device.type == "cuda" else " fp32"))
    for m in methods:
        print(f"  {m} loss={losses[m].weights}")
    for k, v in times.items():
        mem = f"  peak {peaks[k]:.2f} GiB" if device.type == "cuda" else ""
        print(f"  {k:>9}: median {med[k] * 1e3:8.1f} ms/step  (min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f}){mem}")
    for m in methods:
        print(f"{m}/fp step ratio: {med[m] / med['fp']:.2f}x")
        print(f"{m}/fp_nodrop step ratio: {med[m] / med['fp_nodrop']:.2f}x  (FP without dropout)")
    return med[methods[0]] / med["fp"]


if __name__ == "__main__":
    main()
