"""The hub source of XGLUE tasks (offline checks only)."""

from __future__ import annotations

import time

import pytest

from sdq.data import hub
from sdq.data.tasks import get_task
from sdq.errors import SdqDataError


def test_hub_offline_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(SdqDataError) as e:
        hub.read_hub_split("xnli", "de", "dev")
    assert time.perf_counter() - t < 5
    assert str(e.value).startswith("no local data.root given and the hub is unreachable: pass data.root=")
    assert "\n" not in str(e.value)


def test_hub_unreachable_host_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # closed port: refused at once
    t = time.perf_counter()
    assert not hub.hub_reachable(timeout=3)
    assert time.perf_counter() - t < 4


def test_hub_rows_map_to_reader_dicts():
    datasets = pytest.importorskip("datasets")
    cl = datasets.ClassLabel
    xnli = datasets.Dataset.from_dict(
        {"premise": ["p"], "hypothesis": ["h"], "label": [0]},
        features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                    "label": cl(names=["entailment", "neutral", "contradiction"])}))
    assert hub.convert_rows(get_task("xnli"), xnli) == [{"text": "p", "text_pair": "h", "label": 1,
                                                         "group": None}]
    wpr = datasets.Dataset.from_dict(
        {"query": ["a", "b", "a"], "web_page_title": ["t", "u", "v"], "web_page_snippet": ["s", "x", "y"],
         "relavance_label": [4, 0, 1]},
        features=datasets.Features({"query": datasets.Value("string"),
                                    "web_page_title": datasets.Value("string"),
                                    "web_page_snippet": datasets.Value("string"),
                                    "relavance_label": cl(names=["Bad", "Fair", "Good", "Excellent", "Perfect"])}))
    assert [(r["text_pair"], r["label"], r["group"]) for r in hub.convert_rows(get_task("wpr"), wpr)] == [
        ("t s", 4, 0), ("u x", 0, 1), ("v y", 1, 0)]
    ner = datasets.Dataset.from_dict(
        {"words": [["Jan", "woont"]], "ner": [[1, 0]]},
        features=datasets.Features({"words": datasets.Sequence(datasets.Value("string")),
                                    "ner": datasets.Sequence(cl(names=list(get_task("ner").labels)))}))
    assert hub.convert_rows(get_task("ner"), ner) == [{"tokens": ["Jan", "woont"], "labels": [1, 0]}]


def test_datamodule_without_root_offline(monkeypatch):
    from sdq.data.datamodule import XGLUEDataModule

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = type("StubTokenizer", (), {"pad_token_id": 1, "is_fast": True})()  # never called offline
    dm = XGLUEDataModule("xnli", root=None, tokenizer=tok)
    assert dm.val_languages == list(get_task("xnli").languages)
    with pytest.raises(SdqDataError, match="hub is unreachable"):
        dm.prepare_data()
    with pytest.raises(SdqDataError, match="hub is unreachable"):
        dm.setup("fit")
