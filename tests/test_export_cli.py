"""``python -m sdq.export ckpt=... out=...`` on a hand-made sdq checkpoint of a tiny quantized student."""

import json
import subprocess
import sys

import pytest
import torch

from sdq.export import load_quantized
from sdq.export.__main__ import main
from sdq.quant import QuantConfig, prepare, set_phase

W8A8 = {"weight": {"bits": 8, "scheme": "uniform", "symmetric": True, "granularity": "channel",
                   "observer": "minmax"},
        "act": {"bits": 8, "scheme": "uniform", "symmetric": False, "granularity": "tensor", "observer": "ema"},
        "embedding": {"bits": 8, "scheme": "uniform", "symmetric": True, "granularity": "row",
                      "observer": "minmax"},
        "attention": None, "skip": ["classifier"], "overrides": {}, "quant_noise_p": 0.0, "quant_noise_block": 8}


def write_checkpoint(tmp_path, backbone: str) -> tuple:
    """An sdq-style Lightning checkpoint (state_dict ``student.*`` + ``sdq.config``) of a calibrated student."""
    from omegaconf import OmegaConf

    from sdq.lit.restore import build_from_config

    cfg = {"model": {"name_or_path": backbone}, "task": {"name": "sib200"},
           "method": {"name": "sdq", "quantize": True, "quant_noise": 0.0}, "quant": {"name": "w8a8", **W8A8},
           "data": {"root": None, "max_length": 32, "batch_size": 8, "eval_batch_size": 8, "languages": None,
                    "limit_train": None, "limit_eval": 16, "num_workers": 0}, "seed": 0}
    torch.manual_seed(0)
    student = build_from_config(OmegaConf.create(cfg), quantize=False).eval()
    prepare(student, QuantConfig.from_dict(W8A8))
    set_phase(student, "calibrate")
    with torch.no_grad():
        ids = torch.randint(5, 900, (4, 16))
        student(input_ids=ids, attention_mask=torch.ones_like(ids))
    set_phase(student, "frozen")
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
                "sdq": {"config": cfg}}, ckpt)
    return ckpt, student


@pytest.fixture
def small_backbone(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66)
    torch.manual_seed(0)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(str(tmp_path / "backbone"))
    return str(tmp_path / "backbone")


def test_cli_exports_a_checkpoint(tmp_path, small_backbone, capsys):
    ckpt, student = write_checkpoint(tmp_path, small_backbone)
    out = tmp_path / "export"
    res = main([f"ckpt={ckpt}", f"out={out}", "check=false"])
    printed = capsys.readouterr().out
    assert "whole model:" in printed and "embeddings" in printed and "attention" in printed
    assert res["ratio"] > 3.0 and res["onnx"]["ops"]["integer"] + 3 * res["onnx"]["ops"]["qattention"] == 12
    assert json.loads((out / "export_report.json").read_text())["packed_total"] == res["packed_total"]
    ids = torch.randint(5, 900, (3, 10))
    with torch.no_grad():
        ref = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = load_quantized(out, backend="onnx")(ids, torch.ones_like(ids)).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("args", "needle"), [
    (["ckpt=x.ckpt"], "error: out= is required"),
    (["ckpt={tmp}/missing.ckpt", "out={tmp}/o"], "error: checkpoint not found"),
    (["ckpt={tmp}/missing.ckpt", "out={tmp}/o", "backend=tensorrt"],
     "error: backend=tensorrt must be one of: torch, int8, onnx"),
    (["ckpt={tmp}/missing.ckpt", "out={tmp}/o", "check=maybe"], "error: check=maybe must be true"),
    (["ckpt=a", "out={tmp}/o", "tol=abc"], "error: Error merging override tol=abc"),
    (["ckpt=a", "out={tmp}/o", "batchez=2"], "error: batchez is not a config key (did you mean batches?"),
])
def test_cli_argument_errors_are_one_line(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exc:
        main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(needle) and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_cli_help_lists_every_key():
    proc = subprocess.run([sys.executable, "-m", "sdq.export", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in ("ckpt", "out", "onnx", "check", "batches", "tol", "backend"):
        assert f"\n  {key} " in proc.stdout and f"\n{key}: " in proc.stdout, key  # described + its default
    proc = subprocess.run([sys.executable, "-m", "sdq.export", "out=o"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ckpt= is required"), proc.stderr


@pytest.mark.slow
def test_cli_agreement_on_sib200_dev_batches(tmp_path):
    ckpt, _ = write_checkpoint(tmp_path, "tiny")
    res = main([f"ckpt={ckpt}", f"out={tmp_path / 'export'}", "batches=2"])
    assert res["agreement"]["backend"] == "int8" and res["agreement"]["examples"] > 0  # the exact backend
    assert res["agreement"]["max_logit_diff"] == 0.0 and res["agreement"]["metric_diff"] == 0.0
    res = main([f"ckpt={ckpt}", f"out={tmp_path / 'export'}", "batches=2", "backend=onnx"])
    assert res["agreement"]["backend"] == "onnx" and abs(res["agreement"]["metric_diff"]) <= 0.1


def test_sensitivity_cli_is_the_same_hydra_style():
    """``python -m sdq.calib.sensitivity_cli``: the same ConfigStore + Hydra command line as sdq.export."""
    run = [sys.executable, "-m", "sdq.calib.sensitivity_cli"]
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "\nckpt: null" in proc.stdout and "\nact_bits: 8" in proc.stdout, proc.stderr
    proc = subprocess.run([*run, "bitz=3"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: bitz is not a config key (did you mean bits? add a new key with +bitz=3)"], proc.stderr
