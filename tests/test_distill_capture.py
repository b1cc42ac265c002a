"""Capture hooks and per-layer error diagnostics on tiny random XLM-R and BERT."""

import copy
import gc
import weakref

import pytest
import torch
from transformers import (
    BertConfig,
    BertForTokenClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from sdq.distill import (
    attention_blocks,
    attention_output_loss,
    capture,
    layer_errors,
    plot_layer_errors,
    relative_error,
    run_capture,
)
from sdq.errors import SdqModelError

SMALL = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 40}
B, T, H, NH = 2, 7, 32, 2


def xlmr(**kw):
    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**SMALL, num_labels=3, **kw)).eval()


def bert(**kw):
    torch.manual_seed(0)
    return BertForTokenClassification(BertConfig(**SMALL, num_labels=5, **kw)).eval()


def batch(padded=True):
    torch.manual_seed(1)
    ids = torch.randint(3, SMALL["vocab_size"], (B, T))
    am = torch.ones(B, T, dtype=torch.long)
    if padded:
        am[1, 4:] = 0
        ids[1, 4:] = 1  # XLM-R pad id
    return {"input_ids": ids, "attention_mask": am}


def base(model):
    return model.roberta if hasattr(model, "roberta") else model.bert


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("make", [xlmr, bert])
def test_shapes_and_cleanup(make):
    model = make()
    names = [n for n, _ in attention_blocks(model)]
    prefix = "roberta" if make is xlmr else "bert"
    assert names == [f"{prefix}.encoder.layer.{i}.attention" for i in range(2)]
    assert [n for n, _ in attention_blocks(model, r"encoder\.layer\.\d+\.attention$")] == names
    cap = run_capture(model, batch(), attn_out=True, attn_prob=True, hidden=True)
    assert cap.logits.shape[0] == B
    assert [t.shape for t in cap.attn_outs] == [(B, T, H)] * 2
    assert [t.shape for t in cap.hidden] == [(B, T, H)] * 2
    assert [t.shape for t in cap.attn_probs] == [(B, NH, T, T)] * 2
    assert cap.attn_probs[0][1, :, :, 4:].abs().max() == 0  # padded keys get no attention
    assert no_hooks(model) and model.config._attn_implementation == "sdpa"  # restored after eager switch
    with pytest.raises(SdqModelError, match="pattern"):
        attention_blocks(model, r"no_such_module$")


@pytest.mark.parametrize("make", [xlmr, bert])
def test_capture_equals_manual_layer_calls(make):
    model = make()
    enc = base(model)
    b = batch(padded=False)
    with capture(model, attn_out=True, hidden=True) as cap:
        out = model(input_ids=b["input_ids"], output_hidden_states=True)
    with torch.no_grad():
        emb = enc.embeddings(input_ids=b["input_ids"])  # (B, T, H)
        a0 = enc.encoder.layer[0].attention(emb)[0]  # attention block output, no mask (no padding)
        ctx0 = enc.encoder.layer[0].attention.self(emb)[0]
        h0 = enc.encoder.layer[0](emb)
    torch.testing.assert_close(cap.attn_outs[0], a0, rtol=0, atol=0)
    torch.testing.assert_close(cap.hidden[0], h0, rtol=0, atol=0)
    for i in range(2):  # HF's own recording: hidden_states[i + 1] is the output of layer i
        torch.testing.assert_close(cap.hidden[i], out.hidden_states[i + 1], rtol=0, atol=0)
    with capture(model, point="self") as cap_self:
        model(input_ids=b["input_ids"])
    torch.testing.assert_close(cap_self.attn_outs[0], ctx0, rtol=0, atol=0)


def test_attention_probs_equal_hf_output_attentions():
    model = xlmr(attn_implementation="eager")
    b = batch()
    with torch.no_grad():
        ref = model(**b, output_attentions=True).attentions
    cap = run_capture(model, b, attn_out=False, attn_prob=True)
    assert not cap.attn_outs and len(cap.attn_probs) == 2
    for got, want in zip(cap.attn_probs, ref):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_each_forward_replaces_capture():
    model = bert()
    with capture(model, attn_out=True, hidden=True) as cap:
        model(**batch())
        model(**batch())
    assert len(cap.attn_outs) == 2 and len(cap.hidden) == 2


def test_gradients_reach_student_not_teacher_and_no_graph_kept():
    teacher = xlmr()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.roberta.encoder.layer[0].attention.self.query.weight.add_(0.05)
    b = batch()
    cap_t = run_capture(teacher, b)
    assert all(not t.requires_grad for t in cap_t.attn_outs) and not cap_t.logits.requires_grad
    cap_s = run_capture(student, b, grad=True)
    loss = attention_output_loss(cap_s.attn_outs, cap_t.attn_outs, b["attention_mask"])
    assert loss.item() > 0
    loss.backward()
    q = student.roberta.encoder.layer[0].attention.self.query.weight
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    # after detach nothing but the user's Capture references the captured tensors (and their graphs)
    hooks = capture(student, attn_out=True)
    live = hooks.attach()
    out = student(**b)
    ref = weakref.ref(live.attn_outs[0])
    hooks.detach()
    assert no_hooks(student) and hooks._cap is None
    del live, out
    gc.collect()
    assert ref() is None


def test_layer_errors_identical_models_are_zero():
    teacher = xlmr()
    student = copy.deepcopy(teacher)
    errs = layer_errors(student, teacher, batch())
    assert set(errs) == {"layer_carried", "layer_local", "attn_carried", "attn_local"}
    assert all(len(v) == 2 and all(e == 0.0 for e in v) for v in errs.values())


@pytest.mark.parametrize("make", [xlmr, bert])
def test_layer_errors_perturbed_layer1(make):
    teacher = make()
    student = copy.deepcopy(teacher).train()  # training flags are restored afterwards
    with torch.no_grad():
        base(student).encoder.layer[1].attention.self.value.weight.mul_(1.5)
    errs = layer_errors(student, teacher, batch())
    assert student.training and not teacher.training
    assert errs["layer_local"][0] == 0.0 and errs["attn_local"][0] == 0.0
    assert errs["layer_carried"][0] == 0.0 and errs["attn_carried"][0] == 0.0
    assert errs["layer_local"][1] > 0 and errs["attn_local"][1] > 0 and errs["layer_carried"][1] > 0
    # an error only in layer 1's FFN: the attention block of layer 1 is still exact
    student2 = copy.deepcopy(teacher)
    with torch.no_grad():
        base(student2).encoder.layer[1].output.dense.weight.mul_(1.5)
    errs2 = layer_errors(student2, teacher, batch())
    assert errs2["attn_local"][1] == 0.0 and errs2["layer_local"][1] > 0


def test_layer_errors_local_equals_manual_replay():
    teacher = xlmr()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.roberta.encoder.layer[0].output.dense.weight.mul_(1.3)
        student.roberta.encoder.layer[1].attention.output.dense.weight.mul_(0.7)
    b = batch(padded=False)
    errs = layer_errors(student, teacher, {"input_ids": b["input_ids"]})
    with torch.no_grad():
        hs = teacher(input_ids=b["input_ids"], output_hidden_states=True).hidden_states
        s_hs = student(input_ids=b["input_ids"], output_hidden_states=True).hidden_states
        local1 = student.roberta.encoder.layer[1](hs[1])  # student layer 1 on the teacher's input
    assert errs["layer_local"][1] == pytest.approx(relative_error(local1, hs[2]), abs=1e-12)
    assert errs["layer_carried"][1] == pytest.approx(relative_error(s_hs[2], hs[2]), abs=1e-12)
    assert errs["layer_carried"][1] != errs["layer_local"][1]


def test_relative_error_masked():
    t = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # (1, 2, 2)
    s = torch.tensor([[[3.0, 5.0], [9.0, 9.0]]])
    assert relative_error(s, t, torch.tensor([[1, 0]])) == pytest.approx(1 / 5, abs=1e-12)


def test_plot_layer_errors(tmp_path):
    teacher = bert()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        base(student).encoder.layer[1].attention.self.value.weight.mul_(1.5)
    errs = layer_errors(student, teacher, batch())
    errs_b = {k: [2 * e for e in v] for k, v in errs.items()}
    path = plot_layer_errors({"W8": errs, "W4": errs_b}, tmp_path / "sub" / "errors.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    lin = plot_layer_errors({"W8": errs}, tmp_path / "lin.png", kinds=["layer_carried"], log=False)
    assert lin.read_bytes()[:4] == b"\x89PNG"
