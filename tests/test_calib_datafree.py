"""Data-free calibration inputs (tokenizer unigram pieces) and data-free PTQ with budgeted FP modules."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

from sdq.calib.datafree import (
    calibration_batches,
    datafree_batches,
    piece_script,
    prepare_datafree,
    unigram_table,
)
from sdq.calib.sensitivity import budget_skip, layer_sensitivity
from sdq.quant import QuantConfig, quantizers

SMALL = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 80}
PIECES = [("\u2581the", -2.0), ("\u2581a", -2.5), ("s", -3.0), ("\u2581cat", -3.2), ("\u2581при", -3.5),
          ("вет", -4.0), ("\u2581мир", -4.2), ("\u2581你", -4.0), ("好", -4.5), ("\u2581123", -1.0), (".", -3.0)]
W8A8 = {"weight": {"bits": 8, "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "granularity": "channel"},
        "embedding": {"bits": 8, "granularity": "row"}}


@pytest.fixture(scope="module")
def tok():
    special = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return XLMRobertaTokenizer(vocab=special + PIECES + [("<mask>", 0.0)])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_piece_script():
    assert [piece_script(p) for p in ["\u2581the", "вет", "好", "\u2581123", "."]] == \
        ["LATIN", "CYRILLIC", "CJK", "", ""]


def test_unigram_table(tok):
    prob, scripts = unigram_table(tok)
    raw = torch.tensor([0.0] * 4 + [s for _, s in PIECES] + [0.0], dtype=torch.float64).exp()
    raw[[0, 1, 2, 3, 15]] = 0.0  # special tokens never sampled
    assert torch.allclose(prob, raw / raw.sum(), rtol=1e-12, atol=0)
    assert scripts[4] == "LATIN" and scripts[8] == "CYRILLIC" and scripts[11] == "CJK"


def test_datafree_batches_pairs_scripts_and_seed(tok):
    bs = datafree_batches(tok, n=10, batch_size=4, min_len=2, max_len=5, seed=3)
    assert [b["input_ids"].shape[0] for b in bs] == [4, 4, 2]
    again = datafree_batches(tok, n=10, batch_size=4, min_len=2, max_len=5, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(bs, again, strict=True))
    other = datafree_batches(tok, n=10, batch_size=4, min_len=2, max_len=5, seed=4)
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(bs, other, strict=True))
    for b in bs:
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
            ids = ids[mask.bool()].tolist()
            assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3  # <s> A </s></s> B </s>
            assert 15 not in ids  # special pieces are never sampled (no <mask>)
            cut = ids.index(2)
            for part in (ids[1:cut], ids[cut + 2:-1]):
                text = tok.decode(part, skip_special_tokens=True)
                assert len({piece_script(ch) for ch in text if ch.isalpha()}) == 1, text  # one script


def tiny():
    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**SMALL, num_labels=3)).eval()


def test_prepare_datafree_keeps_sensitive_modules_within_budget(tok, tmp_path):
    opts = {"n": 8, "batch_size": 4, "min_len": 3, "max_len": 6, "probe_n": 8, "probe_bits": 2, "budget": 0.8}
    ref_model = tiny()
    probe_inputs = datafree_batches(tok, 8, 4, 3, 6, True, 0)
    rows = layer_sensitivity(ref_model, QuantConfig.from_dict(W8A8), probe_inputs, weight_bits=2, act_bits=8)
    want = budget_skip(rows, ref_model, QuantConfig.from_dict(W8A8), 0.8, 0.8)
    assert want  # at this budget some modules can stay FP
    model = tiny()
    qcfg = QuantConfig.from_dict(W8A8)
    rep = prepare_datafree(model, qcfg, tok, opts, tmp_path)
    assert rep.extra["datafree"]["kept_fp"] == want
    assert qcfg.skip == ["classifier"] + [f"^{re.escape(n)}$" for n in want]
    assert rep.share_quantized >= 0.8 and rep.act_share >= 0.8
    names = {n for n, _ in model.named_modules()}
    assert all(f"{n}.weight_quantizer" not in names for n in want)  # kept FP
    acts = [q for n, q in quantizers(model) if n.endswith("act_quantizer")]
    assert acts and all(q.phase_name == "frozen" and bool(q.initialized) for q in acts)
    assert all(float((q.max_val - q.min_val).max()) > 0 for q in acts)  # ranges observed on data-free inputs
    assert (tmp_path / "sensitivity.md").exists() and (tmp_path / "sensitivity.png").exists()


def test_calibration_batches_mix_task_and_multilingual_pseudo_sentences(tok, caplog, tmp_path):
    from transformers import BertTokenizerFast

    task = [{"input_ids": torch.full((2, 5), i + 5), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
            for i in range(10)]
    mixed = calibration_batches(task, 3, tok, n_pseudo=10, batch_size=4)
    assert mixed[:3] == task[:3] and len(mixed) == 3 + 3  # 10 pairs in batches of 4
    pseudo = datafree_batches(tok, n=10, batch_size=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(mixed[3:], pseudo, strict=True))
    assert calibration_batches(task, 2, tok, n_pseudo=0) == task[:2]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\ncat\n")
    with caplog.at_level("WARNING"):  # WordPiece: no unigram scores -> task batches only, with a warning
        assert calibration_batches(task, 2, BertTokenizerFast(vocab_file=str(vocab_file)), n_pseudo=8) == task[:2]
    assert "calibrate_multilingual skipped" in caplog.text
