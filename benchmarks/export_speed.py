"""CPU speed and size of exported students vs FP32 torch and the int8 tools a user would pick instead.

One run, same model, same inputs, same threads: torch FP32; our exported W8A8 and W7A8 (static int8
onnxruntime with the student's own scales; and in torch, int8 GEMMs, bit-identical to the student, also with
the input quantization compiled into one pass (``compile=True``), with and without the Q/K/V and GELU
fusions; 7-bit weights run the fast u8 x s8 kernels exactly on CPUs without VNNI; beside the default, each
other exact kernel that runs here, forced, e.g. with VNNI oneDNN's GEMM with the epilogue fused and
onnxruntime's beside ``torch._int_mm``), W8A8 with rotated per-token inputs (``quant=w8a8_rot``: each input
rotated and quantized at run time, float GEMMs) and W4 (weight-only, dequantized float weights in onnxruntime); torch
``quantize_dynamic``
int8; onnxruntime ``quantize_dynamic`` int8 on the plain ONNX export. Latency at batch 1 and throughput at
batch 32 (seq 128), timed round-robin (min of ``--reps``) so that load from other processes hits every
variant alike; packed checkpoint sizes at W8/W4/W2 vs the fp32 checkpoint;
agreement of the int8 model with the fake-quantized student.

    python benchmarks/export_speed.py                    # me5_small, ~6 min on 2 cores
    python benchmarks/export_speed.py --quick            # fewer reps, no W4 ONNX, ~2 min
    python benchmarks/export_speed.py --model tiny --quick
    python benchmarks/export_speed.py --model me5_small_random   # the architecture, random weights (timing)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch


def cpu_line() -> str:
    """The CPU and which kernel our ``int8`` backend runs on it (the int8 speed depends on it)."""
    from sdq.int8 import cpu_has_vnni, int8_kernels

    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    cpu = torch.device("cpu")
    kernel = (f"the first of {int8_kernels(cpu, True)} for 7-bit weight codes, of {int8_kernels(cpu, False)} for "
              f"8-bit ones (all exact; the *_eager_<kernel> and *_compiled_<kernel> rows force the other integer kernels); torch._int_mm has a fast CPU kernel "
              f"only with AVX-512 VNNI, oneDNN's u8 x s8 runs 7-bit codes (exact with or without VNNI)")
    onnx = ("int8 weights (u8 x s8, VNNI)" if cpu_has_vnni() else
            "8-bit weights rewritten as uint8 (u8 x u8: exact; ORT's u8 x s8 saturates without VNNI; _s8 row = as "
            "written), 7-bit weights as int8 (u8 x s8 exact on them)")
    return (f"cpu: {name}, torch capability {torch.backends.cpu.get_cpu_capability()}; our int8 backend: {kernel}; "
            f"our onnx backend: {onnx}")


class Forced(torch.nn.Module):
    """A copy of ``model`` with :class:`~sdq.int8.Int8Linear` forced onto one GEMM kernel. A copy,
    not the same weights: a variant timed right after another on the same weights most likely finds them in the
    CPU's cache (with shared weights, forced rows at batch 1 timed ~6 ms faster than the same kernels in the row
    before them)."""

    def __init__(self, model: torch.nn.Module, kernel: str):
        super().__init__()
        self.model, self.kernel = copy.deepcopy(model), kernel

    def forward(self, *args, **kwargs):
        from sdq.int8 import use_int8_kernel

        with use_int8_kernel(self.kernel):
            return self.model(*args, **kwargs)


def student(fp: torch.nn.Module, bits: int, act: bool, calib: list[dict], rotate: bool = False) -> torch.nn.Module:
    """A fake-quantized copy of ``fp`` calibrated on ``calib`` (random head: speed/size only); ``rotate``: its
    Linear inputs rotated and quantized per token (``quant=w8a8_rot``'s inputs)."""
    from sdq.quant import QuantConfig, prepare, set_phase

    m = copy.deepcopy(fp)
    a = {"bits": 8, "symmetric": False, "observer": "ema"} if act else None
    if rotate:
        a = {"bits": 8, "symmetric": False, "granularity": "token", "rotate": True}
    prepare(m, QuantConfig.from_dict({
        "weight": {"bits": bits, "granularity": "channel"},
        "act": a,
        "embedding": {"bits": bits, "granularity": "row"}}))
    set_phase(m, "calibrate")
    with torch.no_grad():
        for b in calib:
            m(**b)
    set_phase(m, "frozen")
    return m


def ort_dynamic(fp_model: torch.nn.Module, tmp: Path) -> Path:
    """What a user does with onnxruntime: plain ONNX export + ``quantize_dynamic`` int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sdq.export.onnx_build import export_fp_onnx

    raw, q = tmp / "fp32.onnx", tmp / "ort_dynamic.onnx"
    export_fp_onnx(fp_model, raw)
    quantize_dynamic(str(raw), str(q), weight_type=QuantType.QInt8)
    raw.unlink()
    return q


def round_robin(fns: dict, reps: int) -> dict[str, float]:
    """Best wall time per variant over ``reps`` interleaved rounds (one warm-up call each first)."""
    best = dict.fromkeys(fns, float("inf"))
    with torch.inference_mode():
        for f in fns.values():
            f()
        for _ in range(reps):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 rep at batch 32, no W4 ONNX model")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    from sdq.export import check_agreement, export_quantized, load_quantized
    from sdq.export.ort_model import OrtModel, ort_session
    from sdq.export.writer import WEIGHTS_FILE
    from sdq.int8 import cpu_has_vnni, int8_kernels
    from sdq.models import build_model

    t0 = time.time()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 20000, (args.batch, args.seq), generator=g)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    single = {k: v[:1] for k, v in batch.items()}
    calib = [{k: v[i:i + 8] for k, v in batch.items()} for i in range(0, args.batch, 8)]
    res: dict = {"model": args.model, "threads": args.threads, "seq": args.seq, "batch": args.batch,
                 "cpu": cpu_line()}
    print(res["cpu"], flush=True)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        torch.manual_seed(0)
        fp = build_model(args.model, "seq_cls", 3).eval()
        fp.save_pretrained(str(tmp / "fp32"))
        fp32_bytes = (tmp / "fp32" / "model.safetensors").stat().st_size
        sizes = {"fp32_checkpoint_MB": fp32_bytes / 1e6}
        models = {"torch_fp32": fp}
        # w7a8: 7-bit weight codes are exact on the fast u8 x s8 kernels of CPUs without VNNI (quant=w7a8_int8)
        for bits, act, rot in ((8, True, False), (8, True, True), (7, True, False), (4, False, False),
                               (2, False, False)):
            tag = (f"w{bits}a8" if act else f"w{bits}") + ("_rot" if rot else "")
            s = student(fp, bits, act, calib[:1], rotate=rot)
            onnx = act or (bits == 4 and not args.quick)
            rep = export_quantized(s, tmp / tag, onnx=onnx, hf_copy=False)  # the packed file alone
            packed = (tmp / tag / WEIGHTS_FILE).stat().st_size
            sizes[tag] = {"packed_MB": packed / 1e6, "ratio_vs_fp32_checkpoint": fp32_bytes / packed,
                          "tensor_ratio": rep.ratio}
            print(f"[{time.time() - t0:5.0f}s] {tag}: packed {packed / 1e6:.1f} MB, "
                  f"{fp32_bytes / packed:.2f}x smaller than the fp32 checkpoint\n{rep.table()}", flush=True)
            if onnx:
                models[f"ours_{tag}_onnx"] = OrtModel(tmp / tag / "model.onnx", threads=args.threads)
                if bits == 8 and not rot and not cpu_has_vnni():  # the default rewrote int8 weights as uint8: time u8 x s8 too
                    models[f"ours_{tag}_onnx_s8"] = OrtModel(tmp / tag / "model.onnx", args.threads, u8_weights=False)
            if act:  # the int8 backend, and beside it each exact kernel that runs here, forced
                kernels = [] if rot else int8_kernels(torch.device("cpu"), s8_codes=bits == 7)
                ours = f"ours_{tag}_torch_int8"  # rotated: each input rotated and fake-quantized, float GEMMs
                models[ours] = load_quantized(tmp / tag, backend="int8")
                if bits == 8 and not rot:  # the exact fallback, timed beside it
                    models[f"{ours}_fp32gemm"] = Forced(models[ours], "fp32")
                for k in kernels[1:-1]:  # the other integer kernels, forced, eager
                    models[f"{ours}_eager_{k}"] = Forced(models[ours], k)
                if bits == 7 or "int_mm" in kernels:  # input codes in one compiled pass
                    models[f"{ours}_compiled"] = load_quantized(tmp / tag, backend="int8", compile=True)
                    for k in kernels[1:-1]:  # the other integer kernels, forced
                        models[f"{ours}_compiled_{k}"] = Forced(models[f"{ours}_compiled"], k)
                if bits == 7:  # without the Q/K/V and GELU fusions (sdq.export.int8_fuse), timed beside them
                    models[f"{ours}_compiled_unfused"] = load_quantized(tmp / tag, backend="int8", compile=True,
                                                                        fuse=False)
                for key in [k for k in models if k.startswith(f"ours_{tag}_")]:
                    ag = check_agreement(s, models[key], calib[:2], raise_on_fail=False)
                    res[f"agreement_{key.removeprefix('ours_')}"] = {k: ag[k] for k in ("max_logit_diff",
                                                                                          "prediction_agreement")}
            del s
        res["sizes"] = sizes
        models["torch_quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(fp), {torch.nn.Linear}, dtype=torch.qint8)
        sess = ort_session(ort_dynamic(fp, tmp), args.threads, u8_weights=False)  # the tool's own default
        print(f"[{time.time() - t0:5.0f}s] models ready; timing {list(models) + ['ort_quantize_dynamic']}",
              flush=True)

        def runner(m, b):
            return lambda: m(b["input_ids"], b["attention_mask"])

        def ort_runner(b):
            feed = {k: v.numpy() for k, v in b.items()}
            return lambda: sess.run(None, feed)

        timings = {}
        for label, b, reps in (("batch1", single, max(args.reps, 3) * 3), (f"batch{args.batch}", batch,
                                                                          1 if args.quick else args.reps)):
            fns = {k: runner(m, b) for k, m in models.items()}
            fns["ort_quantize_dynamic"] = ort_runner(b)
            timings[label] = round_robin(fns, reps)
    res["timings_s"] = timings
    bl, bb = timings["batch1"], timings[f"batch{args.batch}"]
    print(f"\n{'variant':<38} {'b1 latency ms':>14} {'b' + str(args.batch) + ' tok/s':>12} {'vs fp32':>8}")
    for k in bb:
        tput = args.batch * args.seq / bb[k]
        print(f"{k:<38} {bl[k] * 1e3:>14.1f} {tput:>12.0f} {bb['torch_fp32'] / bb[k]:>7.2f}x")
    print()
    for k in bb:
        if k != "torch_fp32":
            print(f"{k}/fp32 throughput: {bb['torch_fp32'] / bb[k]:.2f}x   latency b1: {bl['torch_fp32'] / bl[k]:.2f}x")
    for tag, s in sizes.items():
        if isinstance(s, dict):
            print(f"{tag} checkpoint: {s['packed_MB']:.1f} MB, fp32/{tag} size: {s['ratio_vs_fp32_checkpoint']:.2f}x")
    for key in [k for k in res if k.startswith("agreement_")]:
        print(f"{key.removeprefix('agreement_')} vs its student: {json.dumps(res[key])}")
    print(f"total benchmark time {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
