"""Per-token embedding bits (token_bits), row-wise binary codes, size accounting, mixed presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tiny import xlmr

import sdq.config  # noqa: F401 - registers ${bits_or:N}, used by the conf/quant presets
from sdq.errors import SdqConfigError
from sdq.quant import BinaryCodeQuantizer, QuantConfig, QuantEmbedding, QuantLinear, prepare, quant_report
from sdq.quant.config import QuantizerConfig
from sdq.quant.token_bits import (
    RowBinaryQuantizer,
    assign_bits,
    assign_token_bits,
    count_tokens,
    tokenizer_frequencies,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
MIXED = {"weight": {"bits": 4, "granularity": "channel"}, "embedding": {"bits": 4, "scheme": "binary",
         "granularity": "row"}, "overrides": {r"attention\.": {"bits": 8}},
         "token_bits": {"buckets": [[4, 0.1], [2, 0.2]], "rest_bits": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")


def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 120, (3, 9), generator=g)


def test_assign_bits_matches_hand_ranking():
    freq = torch.tensor([5, 0, 9, 1, 9, 3, 0, 2, 7, 4])
    # rank: 2, 4 (ties by id), 8, 0, 9, 5, 7, 3, 1, 6 -> 2 rows 4 bits, next 3 rows 2 bits, rest 1
    want = torch.tensor([2, 1, 4, 1, 4, 1, 1, 1, 2, 2], dtype=torch.int8)
    assert torch.equal(assign_bits(freq, [[4, 0.2], [2, 0.3]], 1), want)
    # unseen tokens get rest_bits even inside a bucket
    assert torch.equal(assign_bits(torch.tensor([3.0, 0, 0, 1]), [[4, 1.0]], 1),
                       torch.tensor([4, 1, 1, 4], dtype=torch.int8))


def test_row_binary_equals_binary_code_per_row():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    q = RowBinaryQuantizer(QuantizerConfig(bits=3, scheme="binary", granularity="row"), (6, 16))
    q.row_bits.copy_(torch.tensor([1, 2, 3, 1, 2, 3]))
    q.calibrate_(w)
    out = q(w)
    for r, b in enumerate([1, 2, 3, 1, 2, 3]):
        ref = BinaryCodeQuantizer(QuantizerConfig(bits=b, scheme="binary", granularity="row"), (1, 16))
        ref.calibrate_(w[r:r + 1])
        # batched least squares (several rows per linalg.solve) may differ from one row's in the last ulp
        torch.testing.assert_close(out[r], ref(w[r:r + 1])[0], rtol=1e-6, atol=1e-6)
        assert int((q.alpha[r] != 0).sum()) <= b and torch.equal(q.alpha[r, b:], torch.zeros(3 - b))
    codes, params = q.quantize_int(w)
    assert torch.equal(q.dequantize_int(codes, params), out)
    bits, overhead = q.storage_bits()
    assert bits == 2.0 and overhead == 32 * 12


def test_prepare_token_bits_report_and_restore():
    model = xlmr()
    cfg = QuantConfig.from_dict(MIXED)
    prepare(model, cfg)
    emb = model.roberta.embeddings.word_embeddings
    assert isinstance(emb.weight_quantizer, RowBinaryQuantizer) and int(emb.weight_quantizer.row_bits.min()) == 4
    freq = torch.arange(120, 0, -1).float()  # token 0 most frequent
    freq[100:] = 0
    avg = assign_token_bits(model, cfg.token_bits, freq)
    want = torch.tensor([4] * 12 + [2] * 24 + [1] * 84, dtype=torch.int8)  # round(0.1*120), round(0.2*120)
    assert torch.equal(emb.weight_quantizer.row_bits, want)
    assert avg == {"roberta.embeddings.word_embeddings": float(want.double().mean())}
    rep = quant_report(model)
    # hand size: linear weights at 4 (FFN) / 8 (attention) bits + 32-bit scale per row; embeddings binary
    data, overhead, quantized = 0.0, 0.0, 0
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            b = 8 if "attention." in name else 4
            data += b * m.weight.numel()
            overhead += 32 * m.out_features
            quantized += m.weight.numel()
        elif isinstance(m, QuantEmbedding):
            rb = m.weight_quantizer.row_bits.double() if name.endswith("word_embeddings") else \
                torch.full((m.num_embeddings,), 4.0, dtype=torch.float64)
            data += float(rb.sum()) * m.embedding_dim
            overhead += 32 * float(rb.sum())
            quantized += m.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    data += 32 * (total - quantized)
    assert rep.params_quantized == quantized
    assert rep.bits_per_param == pytest.approx((data + overhead) / total, rel=1e-12)
    assert rep.size_bytes == round((data + overhead) / 8)
    assert rep.to_dict()["compression"] == 4 * total / rep.size_bytes
    with torch.no_grad():
        before = model(input_ids=ids()).logits
    fresh = xlmr()
    prepare(fresh, QuantConfig.from_dict(MIXED))  # all rows at 4 bits until the state is loaded
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.roberta.embeddings.word_embeddings.weight_quantizer.row_bits, want)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids()).logits, before)
    assert quant_report(fresh).size_bytes == rep.size_bytes


def test_uniform_token_bits_use_row_bits():
    model = xlmr()
    cfg = QuantConfig.from_dict({"embedding": {"bits": 8, "granularity": "row"},
                                 "token_bits": {"buckets": [[8, 0.5]], "rest_bits": 4}})
    prepare(model, cfg)
    assign_token_bits(model, cfg.token_bits, torch.arange(120).float())  # high ids most frequent
    rb = model.roberta.embeddings.word_embeddings.weight_quantizer.row_bits
    assert torch.equal(rb, torch.tensor([4] * 60 + [8] * 60, dtype=torch.int8))
    assert quant_report(model).modules[0]["bits"] == 6.0


@pytest.mark.parametrize("tb, emb", [
    ({"buckets": [[8, 0.1]]}, {"bits": 4, "scheme": "binary", "granularity": "row"}),
    ({"rest_bits": 1}, {"bits": 4, "granularity": "row"}),
    ({"buckets": [[4, 0.7], [2, 0.5]]}, {"bits": 4, "scheme": "binary", "granularity": "row"}),
    ({"source": "web"}, {"bits": 4, "scheme": "binary", "granularity": "row"}),
    ({}, None),
])
def test_token_bits_config_errors(tb, emb):
    with pytest.raises(SdqConfigError):
        QuantConfig.from_dict({"embedding": emb, "token_bits": tb}).validate()


def test_count_tokens_and_tokenizer_frequencies():
    from transformers import XLMRobertaTokenizer

    batches = [{"input_ids": torch.tensor([[0, 5, 5, 1]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}]
    assert count_tokens(batches, 7).tolist() == [1, 0, 0, 0, 0, 2, 0]
    tok = XLMRobertaTokenizer(vocab=[("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0),
                                     ("\u2581a", -1.0), ("b", -2.0), ("<mask>", 0.0)])
    f = tokenizer_frequencies(tok)
    assert torch.allclose(f, torch.tensor([0.0, 0, 0, 0, -1, -2, 0], dtype=torch.float64).exp(), atol=0)


@pytest.mark.parametrize("preset", ["mixed_2p5", "mixed_2"])
def test_mixed_presets_prepare_with_per_block_bits(preset):
    d = OmegaConf.to_container(OmegaConf.load(CONF / "quant" / f"{preset}.yaml"), resolve=True)
    cfg = QuantConfig.from_dict(d).validate()
    model = xlmr()
    prepare(model, cfg)
    att = model.roberta.encoder.layer[0].attention.self.query.weight_quantizer.cfg.bits
    ffn = model.roberta.encoder.layer[0].intermediate.dense.weight_quantizer.cfg.bits
    assert (att, ffn) == {"mixed_2p5": (8, 4), "mixed_2": (4, 3)}[preset]
    assert model.classifier.dense.__class__.__name__ == "Linear"
    assert isinstance(model.roberta.embeddings.word_embeddings.weight_quantizer, RowBinaryQuantizer)
