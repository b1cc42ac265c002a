"""XGLUEDataModule on the synthetic fixture with the XLM-R tokenizer: dynamic padding,
first-sub-token labels, per-language loaders, language resolution, determinism."""

from __future__ import annotations

import logging
import site
from pathlib import Path

import pytest
import torch

from sdq.data.datamodule import XGLUEDataModule, first_subtoken_labels, subsample
from sdq.data.synthetic import write_fixture
from sdq.data.tasks import get_task
from sdq.data.xglue import read_split
from sdq.errors import SdqConfigError, SdqDataError

TOKENIZER = next((Path(p) / "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
                  for p in site.getsitepackages()
                  if (Path(p) / "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json").is_file()),
                 None)
MINI = Path(__file__).resolve().parents[2] / "shared/data/mini-xglue"
pytestmark = pytest.mark.skipif(TOKENIZER is None, reason="semantra_multilingual tokenizer.json not installed")


@pytest.fixture(scope="module")
def tok():
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_file=str(TOKENIZER))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("xglue"), tasks=["xnli", "wpr", "ner", "pos"], n=12)


@pytest.mark.parametrize("task", ["xnli", "wpr", "ner"])
def test_dynamic_padding_and_batch_layout(root, tok, task):
    dm = XGLUEDataModule(task, root=root, tokenizer=tok, batch_size=5, eval_batch_size=4)
    dm.setup("fit")
    spec = get_task(task)
    assert (dm.num_labels, dm.head, dm.spec) == (spec.num_labels, spec.kind, spec)
    feats = dm._train
    seen = 0
    for batch in dm.train_dataloader():
        b, width = batch["input_ids"].shape
        assert batch["attention_mask"].sum(1).max().item() == width  # longest row fills the batch
        assert batch["input_ids"].dtype == batch["labels"].dtype == batch["group"].dtype == torch.long
        assert set(batch) == {"input_ids", "attention_mask", "labels", "group"}
        pad = batch["attention_mask"] == 0
        assert (batch["input_ids"][pad] == tok.pad_token_id).all()
        if spec.is_token_task:
            assert batch["labels"].shape == (b, width) and (batch["labels"][pad] == -100).all()
        else:
            assert batch["labels"].shape == (b,)
        seen += b
    assert seen == len(feats) == 12
    assert max(len(f["input_ids"]) for f in feats) <= 128


def test_pad_to_multiple_of_8(root, tok):
    dm = XGLUEDataModule("xnli", root=root, tokenizer=tok, eval_batch_size=3, pad_to_multiple_of=8)
    dm.setup("validate")
    for batch in dm.val_dataloader()[0]:
        longest = batch["attention_mask"].sum(1).max().item()
        assert batch["input_ids"].shape[1] == -(-longest // 8) * 8


def test_pair_tokenization_matches_tokenizer(root, tok):
    dm = XGLUEDataModule("xnli", root=root, tokenizer=tok, max_length=12)
    dm.setup("validate")
    row = read_split(root, "xnli", "ar", "dev")[0]
    ref = tok(row["text"], row["text_pair"], truncation="longest_first", max_length=12)["input_ids"]
    assert dm._val["ar"][0]["input_ids"] == ref and len(ref) <= 12
    assert ref.count(tok.sep_token_id) == 3  # XLM-R pair: <s> A </s></s> B </s>


def test_first_subtoken_labelling_by_hand(tmp_path, tok):
    (tmp_path / "NER").mkdir()
    (tmp_path / "NER/en.train").write_text("Anna B-PER\nvisits O\nAmsterdam B-LOC\ntomorrow O\n\n")
    dm = XGLUEDataModule("ner", root=tmp_path, tokenizer=tok, languages=[])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    pieces = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert pieces == ["<s>", "▁Anna", "▁visit", "s", "▁Amsterdam", "▁tomorrow", "</s>"]
    # B-PER=1, O=0, B-LOC=5; "s" continues "visits", specials ignored
    assert batch["labels"][0].tolist() == [-100, 1, 0, -100, 5, 0, -100]
    assert first_subtoken_labels([None, 0, 0, 1, None], [3, 4]) == [-100, 3, -100, 4, -100]


def test_per_language_loaders_in_order(root, tok):
    dm = XGLUEDataModule("pos", root=root, tokenizer=tok, eval_batch_size=5)
    assert dm.val_languages == dm.test_languages == ["en", "ar"]
    for loaders, split in ((dm.val_dataloader(), "dev"), (dm.test_dataloader(), "test")):
        assert len(loaders) == 2
        for lang, loader in zip(["en", "ar"], loaders):
            rows = read_split(root, "pos", lang, split)
            n_words = sum(len(r["labels"]) for r in rows)
            labelled = sum((b["labels"] != -100).sum().item() for b in loader)
            assert len(loader.dataset) == len(rows) and labelled == n_words  # no word lost


def test_validating_on_narrows_dev_languages_for_a_block(root, tok):
    dm = XGLUEDataModule("pos", root=root, tokenizer=tok, eval_batch_size=5)  # dev languages: en, ar
    with dm.validating_on(["ar"]):  # e.g. stage 1 selecting the teacher on one language
        assert dm.val_languages == ["ar"] and len(dm.val_dataloader()) == 1
        assert len(dm.val_dataloader()[0].dataset) == len(read_split(root, "pos", "ar", "dev"))
    assert dm.val_languages == ["en", "ar"] and len(dm.val_dataloader()) == 2  # both loaded, restored
    narrow = XGLUEDataModule("pos", root=root, tokenizer=tok, val_languages=["en"])
    with narrow.validating_on(["ar"]):  # a language outside the run's own dev languages is loaded
        assert [len(x.dataset) for x in narrow.val_dataloader()] == [len(read_split(root, "pos", "ar", "dev"))]
    assert narrow.val_languages == ["en"] and len(narrow.val_dataloader()) == 1
    with narrow.validating_on(None):
        assert narrow.val_languages == ["en"]
    with pytest.raises(SdqConfigError, match="not in task pos"), narrow.validating_on(["xx"]):
        pass
    assert narrow.val_languages == ["en"]


def test_wpr_groups_reach_the_batch(root, tok):
    dm = XGLUEDataModule("wpr", root=root, tokenizer=tok, eval_batch_size=100)
    groups = next(iter(dm.val_dataloader()[1]))["group"].tolist()
    # eval loaders are ordered longest first; every query group still reaches the batch
    assert sorted(groups) == sorted(r["group"] for r in read_split(root, "wpr", "de", "dev"))


def test_language_resolution(root, tok, caplog):
    with caplog.at_level(logging.WARNING, logger="sdq.data.datamodule"):
        dm = XGLUEDataModule("xnli", root=root, tokenizer=tok)
    assert dm.val_languages == ["en", "ar"] and "bg, de" in caplog.text
    assert XGLUEDataModule("xnli", root=root, tokenizer=tok, languages=["ar"]).test_languages == ["ar"]
    with pytest.raises(SdqConfigError, match="no xnli dev file for fr"):
        XGLUEDataModule("xnli", root=root, tokenizer=tok, languages=["en", "fr"])
    with pytest.raises(SdqDataError, match="no xnli dev files; point data.root"):  # a root without the task
        XGLUEDataModule("xnli", root=root / "nowhere", tokenizer=tok, languages=["en"])
    with pytest.raises(SdqConfigError, match="not in task xnli"):
        XGLUEDataModule("xnli", root=root, tokenizer=tok, languages=["ja"])
    with pytest.raises(SdqConfigError, match="tokenizer"):
        XGLUEDataModule("xnli", root=root)


def test_deterministic_shuffle_and_limits(root, tok):
    def first_ids(seed: int) -> list[list[int]]:
        dm = XGLUEDataModule("xnli", root=root, tokenizer=tok, batch_size=12, seed=seed, limit_train=8,
                             limit_eval=5)
        dm.setup("fit")
        assert dm.sizes() == {"train/en": 8, "dev/en": 5, "dev/ar": 5}
        return next(iter(dm.train_dataloader()))["input_ids"].tolist()

    assert first_ids(3) == first_ids(3)
    assert subsample(list(range(10)), 4, seed=0) == subsample(list(range(10)), 4, seed=0)
    assert subsample(list(range(10)), None, seed=0) == list(range(10))


@pytest.mark.skipif(not MINI.is_dir(), reason=f"mini-xglue not found at {MINI}")
def test_mini_xglue_integration(tok):
    dm = XGLUEDataModule("pos", root=MINI, tokenizer=tok, limit_train=64, limit_eval=16, eval_batch_size=16)
    assert len(dm.val_languages) == 16 and "de" not in dm.val_languages
    dm.setup("fit")
    assert len(dm.val_dataloader()) == 16 and len(dm._train) == 64
    xnli = XGLUEDataModule("xnli", root=MINI, tokenizer=tok, limit_eval=10, languages=["en", "sw"])
    batches = [next(iter(dl)) for dl in xnli.test_dataloader()]
    assert [b["labels"].shape[0] for b in batches] == [10, 10]
