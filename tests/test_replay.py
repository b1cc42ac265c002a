"""sdq.calib.replay: an encoder's blocks run one at a time on caught inputs give the full forward's hidden
states; GPTQ towards the teacher on replayed blocks rounds as it does with a full forward pass per layer."""

from __future__ import annotations

import copy

import pytest
import torch
from test_gptq import token_batches
from tiny import xlmr
from torch import nn

from sdq.calib import calibrate, gptq_teacher
from sdq.calib.replay import Stack
from sdq.quant import QuantConfig, prepare
from sdq.quant.modules import QuantLinear


def padded_batches(n: int) -> list[dict]:
    data = token_batches(n)
    for b in data:
        b["attention_mask"][1:, 6:] = 0  # padding on three of the four rows
    return data


@torch.no_grad()
def test_blocks_replayed_on_caught_inputs_give_every_hidden_state():
    model = xlmr().eval()
    data = padded_batches(2)
    stack = Stack.find(model, [n for n, m in model.named_modules() if isinstance(m, nn.Linear)])
    assert stack.prefix == "roberta.encoder.layer" and stack.block_of("roberta.encoder.layer.1.output.dense") == 1
    assert stack.block_of("classifier.dense") is None
    caught = stack.catch(model, data)
    ref = [model(**b, output_hidden_states=True).hidden_states for b in data]  # (emb, layer 0, layer 1)
    for i in range(len(stack.blocks)):
        for b in range(len(data)):
            torch.testing.assert_close(caught.hidden[b], ref[b][i], rtol=0, atol=1e-6)
        caught.advance(i)
    for b in range(len(data)):
        torch.testing.assert_close(caught.hidden[b], ref[b][-1], rtol=0, atol=1e-5)


class Unchained(nn.Module):
    """Two blocks, the second fed something else than the first's output: not replayable."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = input_ids.float().unsqueeze(-1).expand(*input_ids.shape, 4)
        return self.blocks[1](self.blocks[0](x) * 2)


def test_blocks_not_fed_by_the_previous_one_are_not_replayed():
    model = Unchained()
    stack = Stack.find(model, ["blocks.0", "blocks.1"])
    assert stack.catch(model, [{"input_ids": torch.ones(2, 3, dtype=torch.long)}]) is None


@pytest.mark.parametrize("bias", [False, True])
def test_replayed_blocks_round_as_full_passes_do(monkeypatch, bias):
    teacher = xlmr().eval()
    data = padded_batches(4)
    cfg = QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"}, "act": {"bits": 8, "symmetric": False},
                                 "skip": ["classifier"]})
    weights = {}
    for replay in (True, False):
        student = copy.deepcopy(teacher)
        prepare(student, cfg)
        calibrate(student, data, len(data))
        if not replay:
            monkeypatch.setattr(Stack, "find", classmethod(lambda cls, model, names: None))
        assert gptq_teacher(student, teacher, data, bias=bias) == 12
        assert student.training is False and not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())
        weights[replay] = {f"{n}.{k}": t.detach().clone() for n, m in student.named_modules()
                           if isinstance(m, QuantLinear) for k, t in (("weight", m.weight), ("bias", m.bias))}
    moved = 0
    for n, w in weights[True].items():
        moved += int((w != weights[False][n]).sum())
    total = sum(w.numel() for w in weights[True].values())
    assert moved <= 1e-4 * total, (moved, total)  # a rare rounding tie at most
