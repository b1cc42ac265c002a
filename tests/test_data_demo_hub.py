"""The embedded demo task (chatterbot-corpus -> QAM layout) and the hub source (offline checks only)."""

from __future__ import annotations

import time

import pytest

from sdq.data import hub
from sdq.data.demo import demo_languages, demo_sizes, ensure_demo, make_examples
from sdq.data.tasks import get_task
from sdq.data.xglue import available_languages, read_split
from sdq.errors import SdqDataError

pytest.importorskip("chatterbot_corpus")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return ensure_demo(tmp_path_factory.mktemp("cache"))


def test_demo_layout_sizes_and_balance(demo_root):
    spec = get_task("demo")
    assert demo_languages(demo_root) == list(spec.languages)  # the spec lists what is built
    assert available_languages(demo_root, "demo", "train") == ["en"]
    assert available_languages(demo_root, "demo", "test") == list(spec.languages)
    sizes = demo_sizes(demo_root)
    for key, n in sizes.items():
        lang, split = key.split("/")
        rows = read_split(demo_root, "demo", lang, split)
        assert len(rows) == n and n % 2 == 0
        assert sum(r["label"] for r in rows) == n // 2  # balanced
    assert sizes["en/train"] > 8 * sizes["en/dev"] / 2


def test_demo_splits_do_not_share_questions(demo_root):
    qs = {s: {r["text"] for r in read_split(demo_root, "demo", "en", s)} for s in ("train", "dev", "test")}
    assert not (qs["train"] & qs["dev"]) and not (qs["train"] & qs["test"]) and not (qs["dev"] & qs["test"])


def test_demo_is_cached_and_deterministic(demo_root, tmp_path):
    stamp = (demo_root / "manifest.json").stat().st_mtime_ns
    assert ensure_demo(demo_root.parent) == demo_root
    assert (demo_root / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    other = ensure_demo(tmp_path)
    f = "QAM/xglue.qam.de.dev"
    assert (other / f).read_bytes() == (demo_root / f).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo_xglue")]  # temp dir removed


def test_negatives_never_true_answers():
    import random

    pairs = [("q1", "a1"), ("q1", "a2"), ("q2", "a2"), ("q3", "a3")]
    rows = make_examples(pairs, random.Random(0))
    true = {("q1", "a1"), ("q1", "a2"), ("q2", "a2"), ("q3", "a3")}
    assert all(((q, a) in true) == bool(y) for q, a, y in rows)
    assert sum(y for *_, y in rows) * 2 == len(rows)


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
