"""Empirical bias correction: the exact shift on one Linear (padding excluded), the defining property (the
corrected layer's mean output equals the float layer's on the calibration tokens), a tiny XLM-R, and a PTQ
run through train.py (its refusals are in test_bad_inputs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import xlmr
from torch import nn

from sdq.calib import calibrate, correct_bias
from sdq.quant import QuantConfig, QuantizerConfig, prepare
from sdq.quant.modules import QuantLinear

REPO = Path(__file__).resolve().parents[1]


class OneLinear(nn.Module):
    """input_ids (B, T) -> embedding (B, T, 8) -> QuantLinear (B, T, 5)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(30, 8)
        self.lin = QuantLinear.from_linear(nn.Linear(8, 5), QuantizerConfig(bits=2, granularity="tensor"),
                                           QuantizerConfig(bits=3, symmetric=False))

    def forward(self, input_ids, attention_mask=None):
        return self.lin(self.emb(input_ids))


def batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(0, 30, (4, 6), generator=g)
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[1:, 4:] = 0  # padded tails
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4, dtype=torch.long)})
    return out


def test_shift_is_the_mean_float_minus_quantized_output_over_real_tokens():
    m, data = OneLinear(), batches()
    calibrate(m, data, len(data))
    x = torch.cat([m.emb(b["input_ids"])[b["attention_mask"].bool()] for b in data])  # (N, 8) real tokens
    ref = (x @ m.lin.weight.T - m.lin.act_quantizer(x) @ m.lin.weight_quantizer(m.lin.weight).T).mean(0)  # (5,)
    before = m.lin.bias.detach().clone()
    with torch.no_grad():
        y_fp = (x @ m.lin.weight.T + m.lin.bias).mean(0)
    assert correct_bias(m, data) == 1
    torch.testing.assert_close(m.lin.bias - before, ref, rtol=1e-5, atol=1e-6)
    assert ref.abs().max() > 1e-3  # 2-bit weights, 3-bit inputs: a real shift
    with torch.no_grad():  # the defining property: on the calibration tokens the means now agree
        torch.testing.assert_close(m.lin(x).mean(0), y_fp, rtol=1e-5, atol=1e-5)
    padded = torch.cat([m.emb(b["input_ids"]).reshape(-1, 8) for b in data])  # (N + pads, 8)
    with_pads = (padded @ m.lin.weight.T - m.lin.act_quantizer(padded)
                 @ m.lin.weight_quantizer(m.lin.weight).T).mean(0)
    assert not torch.allclose(with_pads, ref, atol=1e-4)  # the padding mask mattered


def test_float_and_unquantized_linears_are_left_alone():
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"},
                                            "act": {"bits": 8, "symmetric": False}, "skip": ["classifier"]}))
    data = [{"input_ids": torch.randint(3, 120, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}]
    calibrate(student, data, 1)
    named = dict(student.named_modules())
    biases = {n: m.bias.detach().clone() for n, m in named.items() if isinstance(m, nn.Linear)}
    n = correct_bias(student, data)
    quantized = [k for k, m in named.items() if isinstance(m, QuantLinear) and m.weight_quantizer is not None]
    assert n == len(quantized) == 12  # 2 layers x (q, k, v, attn out, ffn in, ffn out); classifier skipped
    changed = {k for k, b in biases.items() if not torch.equal(named[k].bias, b)}
    assert changed == set(quantized)


@pytest.mark.slow
def test_tiny_ptq_with_bias_correction_or_gptq(tmp_path):
    """train.py method=ptq method.bias_correction=true: only the encoder's Linear biases differ from the same run
    without it (weights, ranges, classifier equal), and the log says how many were corrected; method.gptq=true:
    only the encoder's Linear weights differ (sdq/calib/gptq.py; its maths: test_gptq), and with
    method.gptq_teacher=true (and bias_correction) their weights and biases differ again."""
    from sdq.data.synthetic import write_fixture

    root = write_fixture(tmp_path / "xglue", tasks=["xnli"], n=12)
    base = [sys.executable, str(REPO / "train.py"), "model=tiny", "task=xnli", f"data.root={root}",
            "data.batch_size=4", "data.eval_batch_size=8", "trainer.enable_progress_bar=false", "logger=none",
            "diagnostics.layer_errors=false", "method=ptq", "method.calibrate_batches=2", "quant=w4a8"]
    states = {}
    for name, extra in (("off", []), ("on", ["method.bias_correction=true"]), ("gptq", ["method.gptq=true"]),
                        ("teacher", ["method.gptq=true", "method.gptq_teacher=true", "method.bias_correction=true"])):
        proc = subprocess.run([*base, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=REPO, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        states[name] = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu",
                                  weights_only=False)["state_dict"]
    log = (tmp_path / "on" / "train.log").read_text()
    assert "bias correction: 12 quantized Linear biases corrected" in log
    assert states["on"].keys() == states["off"].keys()
    moved = {k for k in states["on"] if not torch.equal(states["on"][k], states["off"][k])}
    assert moved and all(k.endswith(".bias") and ".encoder.layer." in k for k in moved)  # not the classifier
    assert "gptq: 12 quantized Linear weights re-rounded" in (tmp_path / "gptq" / "train.log").read_text()
    moved = {k for k in states["gptq"] if not torch.equal(states["gptq"][k], states["off"][k])}
    assert len(moved) == 12 and all(k.endswith(".weight") and ".encoder.layer." in k for k in moved)  # not the classifier
    log = (tmp_path / "teacher" / "train.log").read_text()
    assert re.search(r"gptq: 12 quantized Linear weights re-rounded on \d+ calibration batches, towards the teacher's "
                     r"outputs, with their biases", log)
    assert "bias correction:" not in log  # the biases were fit towards the teacher instead
    moved = {k for k in states["teacher"] if not torch.equal(states["teacher"][k], states["gptq"][k])}
    assert len(moved) == 24 and all(k.endswith((".weight", ".bias")) and ".encoder.layer." in k for k in moved)
