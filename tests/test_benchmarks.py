"""Benchmark scripts run end to end on the tiny model (their ratios are measured by hand, never asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

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


PEERS_ARGS = ["--model", "tiny", "--task", "sib200", "--steps", "2", "--limit-eval", "2", "--teacher", "init",
              "--threads", "1", "data.languages=[eng_Latn,fra_Latn]"]


def check_rows(rows: list[dict], out: str) -> None:
    for r in rows:
        assert set(r["per_language"]) == {"eng_Latn", "fra_Latn"}, r["row"]
        assert 0.0 <= r["agree"] <= 100.0 and math.isfinite(r["acc"]) and r["kl"] > -1e-6, r
        assert r["bytes"] > 0 and r["step_ratio"] > 0, r
        assert r["row"] in out


def test_peers_qat_sdq_rows_run_on_tiny(capsys, monkeypatch):
    """The sdq rows need no peer installed: the script cannot rot where the [peers] extra is absent."""
    monkeypatch.syspath_prepend(str(BENCH))
    rows = load("peers_qat").main([*PEERS_ARGS, "--bits", "W4A8", "--rows", "sdq qat,sdq,sdq g32"])
    assert [r["row"] for r in rows] == ["sdq qat", "sdq", "sdq g32"]
    check_rows(rows, capsys.readouterr().out)
    assert rows[2]["bytes"] > rows[1]["bytes"]  # group-32 scales and FP embeddings vs 4-bit rows


def test_peers_qat_every_row_runs_on_tiny(capsys, monkeypatch, tmp_path):
    pytest.importorskip("torchao", reason="the [peers] extra is not installed: pip install -e '.[peers]'")
    pytest.importorskip("modelopt.torch.quantization", reason="the [peers] extra is not installed")
    monkeypatch.syspath_prepend(str(BENCH))
    rows = load("peers_qat").main([*PEERS_ARGS, "--out", str(tmp_path / "peers.json")])
    out = capsys.readouterr().out
    expected = [(r.name, r.bits) for r in load("peer_students").ROWS if r.name != "sdq +unlabeled"]
    assert [(r["row"], r["bits"]) for r in rows] == expected
    assert "sdq +unlabeled W4A8: skipped (no conf/unlabeled/sib200.yaml)" in out
    check_rows(rows, out)
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert [r["row"] for r in saved["rows"]] == [r["row"] for r in rows] and saved["teacher"]["fp_step_s"] > 0


def test_scheme_ablation_runs_on_tiny(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    ablation = load("scheme_ablation")
    out = ablation.main(["--model", "tiny", "--task", "sib200", "--limit-eval", "2", "--teacher", "init",
                         "--threads", "1", "data.languages=[eng_Latn,fra_Latn]"])
    printed = capsys.readouterr().out
    assert list(out) == [c for c in ablation.CASES if "group-128" not in c]  # tiny: hidden size 32
    assert "group-128 W, FP emb                        skipped: group_size=128 does not divide" in printed
    for name, r in out.items():
        assert 0.0 <= r["agree"] <= 100.0 and r["kl"] > -1e-6 and name in printed, (name, r)


def test_scheme_ablation_cases_filter(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    ablation = load("scheme_ablation")
    out = ablation.main(["--model", "tiny", "--task", "sib200", "--limit-eval", "2", "--teacher", "init",
                         "--threads", "1", "--cases", "w8|emb only", "data.languages=[eng_Latn]"])
    assert list(out) == ["4-bit emb only", "w8a8 (preset: 8-bit emb, static per-channel act)", "w8a8, FP emb",
                         "w8 weights only, FP emb", "w8 weights only, group-32, FP emb",
                         "w8a8, group-32 W", "8-bit emb only"]


def test_scheme_ablation_unknown_case_is_one_error_line(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    ablation = load("scheme_ablation")
    with pytest.raises(SystemExit) as stop:
        ablation.main(["--model", "tiny", "--cases", "w9"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no case matches --cases 'w9'"), err
