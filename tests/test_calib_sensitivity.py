"""Sensitivity probe (one module quantized alone), module kinds, budget selection, table/plot output."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as TF
from tiny import xlmr
from torch import nn

from sdq.calib.sensitivity import (
    budget_skip,
    candidates,
    kind_sensitivity,
    layer_sensitivity,
    module_kind,
    write_sensitivity,
)
from sdq.quant import QuantConfig, prepare, quant_report, set_phase

W8A8 = {"weight": {"bits": 8, "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "granularity": "channel"}}


pytestmark = pytest.mark.usefixtures("one_thread")


def batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(3, 120, (4, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (4,), generator=g)})
    return out


def logits(model, bs):
    with torch.no_grad():
        return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in bs]


def test_module_kind():
    names = {"roberta.encoder.layer.3.attention.self.query": "query", "x.layer.0.attention.self.key": "key",
             "x.layer.0.attention.self.value": "value", "x.layer.1.attention.output.dense": "attn_out",
             "x.layer.1.intermediate.dense": "ffn_in", "x.layer.1.output.dense": "ffn_out",
             "roberta.embeddings.word_embeddings": "embeddings", "classifier.out_proj": "head"}
    assert {n: module_kind(n) for n in names} == names


def test_probe_matches_prepare_of_that_module_alone_and_restores():
    model, bs = xlmr(), batches()
    fp = logits(model, bs)
    qcfg = QuantConfig.from_dict(W8A8)
    rows = layer_sensitivity(model, qcfg, bs, weight_bits=2, act_bits=4)
    assert [r["name"] for r in rows] == [c["name"] for c in candidates(model, qcfg)]
    assert len(rows) == 12  # 6 linears x 2 layers, classifier skipped, no embedding config
    assert all(torch.equal(a, b) for a, b in zip(fp, logits(model, bs), strict=True))  # FP restored exactly
    for row in (rows[0], rows[5]):
        ref_model = copy.deepcopy(model)
        cfg = QuantConfig.from_dict({"weight": {"bits": 2, "granularity": "channel"},
                                     "act": {"bits": 4, "symmetric": False, "granularity": "channel"},
                                     "skip": [f"^(?!{re.escape(row['name'])}$)"]})
        prepare(ref_model, cfg)
        set_phase(ref_model, "calibrate")
        logits(ref_model, bs)
        set_phase(ref_model, "frozen")
        qs = [x.double() for x in logits(ref_model, bs)]
        kl = sum(TF.kl_div(q.log_softmax(-1), r.double().log_softmax(-1), log_target=True, reduction="sum").item()
                 for q, r in zip(qs, fp, strict=True)) / 8
        q, r = torch.cat(qs), torch.cat(fp)
        agree = 100.0 * (q.argmax(-1) == r.argmax(-1)).sum().item() / 8
        labels = torch.cat([b["labels"] for b in bs])
        acc = 100.0 * (q.argmax(-1) == labels).sum().item() / 8
        assert (row["kl"], row["agree"], row["acc"]) == (kl, agree, acc)
        assert row["kl"] > 0


def test_probe_with_rotated_inputs_restores_the_float_weights_exactly():
    model, bs = xlmr(), batches()
    fp, before = logits(model, bs), {k: v.clone() for k, v in model.state_dict().items()}
    rot = {"weight": {"bits": 8, "granularity": "channel"},
           "act": {"bits": 8, "symmetric": False, "granularity": "token", "rotate": True}}
    rows = layer_sensitivity(model, QuantConfig.from_dict(rot), bs, weight_bits=4, act_bits=8)
    assert len(rows) == 12 and all(r["kl"] > 0 for r in rows)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # rotated in place, then back
    assert all(torch.equal(a, b) for a, b in zip(fp, logits(model, bs), strict=True))


def test_kind_sensitivity_rows():
    model, bs = xlmr(), batches()
    rows = kind_sensitivity(model, QuantConfig.from_dict(W8A8), bs, weight_bits=2)
    assert sorted(r["kind"] for r in rows) == sorted(["query", "key", "value", "attn_out", "ffn_in", "ffn_out"])
    ffn_out = next(r for r in rows if r["kind"] == "ffn_out")
    assert ffn_out["params"] == 2 * 64 * 32 and ffn_out["act"] == 2 * 64


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 10, bias=False)   # 100 params, 10 act
        self.b = nn.Linear(10, 40, bias=False)   # 400 params, 10 act
        self.c = nn.Linear(40, 10, bias=False)   # 400 params, 40 act
        self.d = nn.Linear(10, 10, bias=False)   # 100 params, 10 act
        self.classifier = nn.Linear(10, 2)       # skipped: 22 params, 10 act


def test_budget_skip_greedy_by_hand():
    model = Toy()
    qcfg = QuantConfig.from_dict(W8A8)
    rows = [{"name": "a", "kl": 0.5}, {"name": "b", "kl": 0.9}, {"name": "c", "kl": 2.0}, {"name": "d", "kl": 0.1}]
    # totals: params 1022, act 80; quantized 1000 params, 70 act; need >= 511 params and >= 40 act quantized.
    # c (kl 2.0) would leave 30 act: passed over; b leaves 600 / 60: kept; a or d would leave 500 < 511.
    assert budget_skip(rows, model, qcfg, 0.5, 0.5) == ["b"]
    # weights only: c leaves 600: kept; then b would leave 200, a or d 500 < 511
    assert budget_skip(rows, model, QuantConfig.from_dict({"weight": W8A8["weight"]}), 0.5, 0.5) == ["c"]
    assert budget_skip(rows, model, qcfg, 0.99, 0.99) == []
    # linear scope: 1020 Linear weights (classifier's 20 included); at 0.49 need >= 499.8 (model: 500.78)
    # and >= 36 act: c leaves 30 act; b kept (600); a leaves 500: fits the linear scope only
    assert budget_skip(rows, model, qcfg, 0.49, 0.45, scope="linear") == ["b", "a"]
    assert budget_skip(rows, model, qcfg, 0.49, 0.45) == ["b"]
    rows[2]["kl"] = 0.0  # not sensitive at all -> never kept
    assert "c" not in budget_skip(rows, model, qcfg, 0.0, 0.0)


def test_budget_shares_hold_after_prepare():
    model, bs = xlmr(), batches()
    qcfg = QuantConfig.from_dict({**W8A8, "embedding": {"bits": 8, "granularity": "row"}})
    rows = layer_sensitivity(model, qcfg, bs, weight_bits=2)
    keep = budget_skip(rows, model, qcfg, 0.6, 0.8)
    assert keep
    qcfg.skip = list(qcfg.skip) + [f"^{re.escape(n)}$" for n in keep]
    rep = prepare(model, qcfg)
    assert rep.share_quantized >= 0.6 and rep.act_share >= 0.8
    assert rep.act_share == quant_report(model).act_share
    total_act = sum(m.in_features for m in model.modules() if isinstance(m, nn.Linear))
    kept_act = sum(getattr(model.get_submodule(n), "in_features", 0) for n in keep) + 32 + 32  # + classifier
    assert rep.act_features_total == total_act and rep.act_features_quantized == total_act - kept_act


def test_write_sensitivity(tmp_path):
    rows = [{"name": "l.0.q", "kind": "query", "layer": 0, "params": 10, "act": 2, "kl": 0.25, "agree": 90.0},
            {"name": "l.0.k", "kind": "key", "layer": 0, "params": 10, "act": 2, "kl": 0.75, "agree": 80.0},
            {"name": "l.1.q", "kind": "query", "layer": 1, "params": 10, "act": 2, "kl": 0.5, "agree": 85.0}]
    files = write_sensitivity(rows, tmp_path, "t")
    assert [f.name for f in files] == ["sensitivity.csv", "sensitivity.md", "sensitivity.png"]
    md = (tmp_path / "sensitivity.md").read_text()
    assert "| key | 1 | 0.75000 | 0.75000 |" in md and "| query | 2 | 0.37500 | 0.50000 |" in md
    assert md.index("| key |") < md.index("| query | 2")  # kinds sorted by max KL
    assert (tmp_path / "sensitivity.csv").read_text().splitlines()[1] == "l.0.q,query,0,10,2,0.25,90.0"
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
