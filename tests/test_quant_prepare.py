"""prepare/strip/phases/report on tiny random XLM-R and BERT, attention internals, checkpoint round trip."""

import copy

import pytest
import torch
from tiny import SMALL, xlmr
from torch import nn
from transformers import (
    BertConfig,
    BertForTokenClassification,
)

from sdq.quant import (
    AttentionQuantizer,
    QuantConfig,
    QuantEmbedding,
    QuantLinear,
    prepare,
    quant_report,
    set_enabled,
    set_phase,
    strip,
)


def bert():
    torch.manual_seed(0)
    return BertForTokenClassification(BertConfig(**SMALL, num_labels=5)).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def out(model, b=None):
    with torch.no_grad():
        return model(**(b or batch())).logits


FULL = {"weight": {"bits": 4, "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "observer": "ema"},
        "embedding": {"bits": 4, "granularity": "row"},
        "attention": {"bits": 8, "symmetric": False}}


@pytest.mark.parametrize("build", [xlmr, bert])
def test_prepare_swaps_modules_and_report(build):
    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    rep = prepare(model, QuantConfig.from_dict(FULL))
    lin = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    emb = [n for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]
    assert len(lin) == 12 and not any("classifier" in n for n in lin)  # 6 per layer, head skipped
    assert len(emb) == 3 and rep.n_embedding == 3 and rep.n_attention == 2
    assert sum(p.numel() for p in model.parameters()) == n_params  # parameters shared, not copied
    q_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, QuantLinear | QuantEmbedding))
    assert rep.params_total == n_params and rep.params_quantized == q_params
    assert rep.share_quantized == q_params / n_params
    assert rep.effective_bits == (4 * q_params + 32 * (n_params - q_params)) / n_params
    overhead = sum(32 * m.weight.shape[0] for m in model.modules() if isinstance(m, QuantLinear | QuantEmbedding))
    assert rep.size_bytes == round((rep.effective_bits * n_params + overhead) / 8)
    assert "effective bits" in str(rep) and rep.to_dict()["params_quantized"] == q_params
    assert "bits=4" in repr(model)


@pytest.mark.parametrize("build", [xlmr, bert])
def test_attention_internals_quantized_and_disable_is_exact_fp(build):
    model = build()
    ref = out(model)
    prepare(model, QuantConfig.from_dict({"attention": {"bits": 2, "symmetric": False}}))
    assert model.config._attn_implementation == "sdq_quant_sdpa"
    attn = [m for m in model.modules() if isinstance(m, AttentionQuantizer)]
    assert len(attn) == 2
    y = out(model)
    assert not torch.allclose(y, ref, atol=1e-4)
    assert all(bool(a.probs.initialized) for a in attn)
    assert attn[0].probs.min_val.item() == 0.0 and 0 < attn[0].probs.max_val.item() <= 1.0
    set_enabled(model, False)
    assert torch.equal(out(model), ref)
    set_enabled(model, True)
    assert torch.equal(out(model), y)  # calibrate phase, same data -> same ranges
    strip(model)
    assert model.config._attn_implementation == "sdpa" and not attn[0] in list(model.modules())
    assert torch.equal(out(model), ref)


def test_eager_base_implementation():
    model = xlmr()
    model.set_attn_implementation("eager")
    ref = out(model)
    prepare(model, QuantConfig.from_dict({"attention": {"bits": 8, "symmetric": False}}))
    assert model.config._attn_implementation == "sdq_quant_eager"
    assert (out(model) - ref).abs().max() < 0.05
    set_enabled(model, False)
    assert torch.equal(out(model), ref)


@pytest.mark.parametrize("build", [xlmr, bert])
def test_disabled_equals_fp_and_strip_equals_fake_quant(build):
    model = build()
    ref = out(model)
    prepare(model, QuantConfig.from_dict({k: FULL[k] for k in ("weight", "embedding")}))
    y = out(model)
    assert not torch.equal(y, ref)
    set_enabled(model, False)
    assert torch.equal(out(model), ref)
    set_enabled(model, True)
    strip(model)
    assert not any(isinstance(m, QuantLinear | QuantEmbedding) for m in model.modules())
    assert type(model.roberta.embeddings.word_embeddings if hasattr(model, "roberta")
                else model.bert.embeddings.word_embeddings) is nn.Embedding
    assert torch.equal(out(model), y)


STATES = {
    "uniform_act_ema_attn": FULL,
    "lsq_group_percentile": {"weight": {"bits": 3, "scheme": "lsq", "granularity": "group", "group_size": 16},
                             "act": {"bits": 4, "scheme": "lsq", "symmetric": False, "observer": "percentile",
                                     "percentile": 99.0, "granularity": "channel"},
                             "embedding": {"bits": 2, "granularity": "row", "observer": "mse"}},
    "kmeans": {"weight": {"bits": 3, "scheme": "kmeans", "granularity": "channel", "kmeans_iters": 5},
               "embedding": {"bits": 2, "scheme": "kmeans", "granularity": "tensor"}},
    "binary": {"weight": {"bits": 2, "scheme": "binary", "granularity": "channel", "binary_iters": 3},
               "embedding": {"bits": 2, "scheme": "binary", "granularity": "row", "binary_iters": 3}},
}


@pytest.mark.parametrize("name", list(STATES))
def test_checkpoint_round_trip_every_state(name):
    cfg = QuantConfig.from_dict(copy.deepcopy(STATES[name]))
    model = xlmr()
    prepare(model, cfg)
    for i in range(2):  # calibrate on two different batches
        b = batch()
        b["input_ids"] = (b["input_ids"] + 7 * i) % 117 + 3
        out(model, b)
    set_phase(model, "learn")
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(**batch()).logits.pow(2).sum().backward()  # a training step moves weights and LSQ steps
    opt.step()
    set_phase(model, "frozen")
    model.eval()
    emb = model.roberta.embeddings.word_embeddings
    if name == "uniform_act_ema_attn":
        emb.set_row_bits(torch.randint(2, 9, (120,)))
    want = out(model)
    fresh = xlmr()
    prepare(fresh, QuantConfig.from_dict(copy.deepcopy(STATES[name])))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(out(fresh), want)
    assert all(b1.equal(b2) for b1, b2 in zip(fresh.buffers(), model.buffers(), strict=True))


def test_skip_overrides_and_module_errors():
    model = xlmr()
    cfg = QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"},
                                 "skip": ["classifier", r"layer\.0\.output"],
                                 "overrides": {r"layer\.1\.": {"bits": 8}, r"classifier\.dense": {"bits": 2}}})
    prepare(model, cfg)
    layers = model.roberta.encoder.layer
    assert type(layers[0].output.dense) is nn.Linear  # skipped
    assert layers[0].intermediate.dense.weight_quantizer.cfg.bits == 4
    assert layers[1].intermediate.dense.weight_quantizer.cfg.bits == 8
    assert type(model.classifier.dense) is nn.Linear  # skip wins over override
    rep = quant_report(model)
    assert sorted({m["bits"] for m in rep.modules}) == [4.0, 8.0]

    with pytest.raises(Exception, match=r"group_size=48 does not divide .*in_features=32"):
        prepare(xlmr(), QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "group", "group_size": 48}}))
    with pytest.raises(Exception, match=r"k-means at 6 bits needs 64 centroids .*word_embeddings"):
        prepare(xlmr(), QuantConfig.from_dict({"embedding": {"bits": 6, "scheme": "kmeans", "granularity": "row"}}))
    with pytest.raises(Exception, match="already quantized"):
        prepare(model, cfg)


def test_embedding_rows_path_equals_full_table_and_per_token_bits():
    model = xlmr()
    prepare(model, QuantConfig.from_dict({"embedding": {"bits": 3, "granularity": "row"}}))
    emb = model.roberta.embeddings.word_embeddings
    bits = torch.full((120,), 3)
    bits[:10] = 8
    emb.set_row_bits(bits)
    ids = batch()["input_ids"]
    full = emb.weight_quantizer(emb.weight)  # (V, H)
    assert torch.equal(emb(ids), full[ids])
    assert quant_report(model).modules[0]["bits"] == (10 * 8 + 110 * 3) / 120


@pytest.mark.parametrize("scheme", ["uniform", "kmeans"])
def test_per_tensor_embedding_looks_up_rows_with_shared_params(scheme):
    model = xlmr()
    prepare(model, QuantConfig.from_dict({"embedding": {"bits": 3, "scheme": scheme, "granularity": "tensor"}}))
    emb = model.roberta.embeddings.word_embeddings
    ids = batch()["input_ids"]
    set_phase(model, "frozen")
    full = emb.weight_quantizer(emb.weight)  # (V, H) quantized with the table-wide params
    assert torch.equal(emb(ids), full[ids])
