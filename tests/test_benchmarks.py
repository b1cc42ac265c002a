"""Benchmark scripts run end to end on the tiny model (their ratios are measured by hand, never asserted)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_overhead_runs_on_tiny(capsys):
    ratio = load("train_overhead").main(["--model", "tiny", "--steps", "1", "--batch-size", "2", "--seq-len", "8",
                                         "--threads", "1"])
    out = capsys.readouterr().out
    assert math.isfinite(ratio) and ratio > 0
    assert f"sdq/fp step ratio: {ratio:.2f}x" in out and "fp: median" in out


def test_export_speed_runs_on_tiny(capsys):
    res = load("export_speed").main(["--model", "tiny", "--quick", "--threads", "1", "--batch", "4", "--seq", "16"])
    out = capsys.readouterr().out
    assert "ours_w8a8_torch_int8/fp32 throughput" in out and "ort_quantize_dynamic/fp32 throughput" in out
    for tag in ("w8a8", "w7a8"):
        assert res[f"agreement_{tag}_torch_int8"] == {"max_logit_diff": 0.0, "prediction_agreement": 100.0}
    assert "agreement_w7a8_torch_int8_compiled" in res
    for key in [k for k in res if k.startswith("agreement_w7a8_torch_int8_compiled")]:  # default, forced kernels
        assert res[key] == {"max_logit_diff": 0.0, "prediction_agreement": 100.0}, key
    assert "ours_w7a8_onnx/fp32 throughput" in out and "w7a8_torch_int8 vs its student" in out
    assert res["sizes"]["w8a8"]["ratio_vs_fp32_checkpoint"] > 1.0


def test_eval_batch_runs_on_tiny(capsys):
    rate = load("eval_batch").main(["--model", "tiny", "--sizes", "8", "64", "--rounds", "1"])
    out = capsys.readouterr().out
    assert set(rate) == {8, 64} and all(r > 0 for r in rate.values())
    assert "816 test examples" in out and "1.00x" in out  # 4 languages x 204, the fastest size at 1.00x
