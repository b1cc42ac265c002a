"""Readers of the official XGLUE layout: every task on the synthetic fixture, hand-written files,
error messages (file:line), task registry, and the mini-xglue real data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdq.data.synthetic import write_fixture
from sdq.data.tasks import NER_TAGS, TASKS, UPOS_TAGS, get_task
from sdq.data.xglue import available_languages, read_split, split_path
from sdq.errors import SdqConfigError, SdqDataError

XGLUE = ["xnli", "pawsx", "nc", "qam", "qadsm", "wpr", "ner", "pos"]
MINI = Path(__file__).resolve().parents[2] / "shared/data/mini-xglue"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("xglue"), n=12)


def test_registry_facts():
    assert len(get_task("xnli").languages) == 15 and len(get_task("pos").languages) == 18
    assert len(UPOS_TAGS) == 17 and get_task("pos").labels == UPOS_TAGS
    assert get_task("ner").labels == NER_TAGS and get_task("ner").metric == "f1"
    assert len(get_task("nc").labels) == 10
    assert {t: TASKS[t].kind for t in ("xnli", "wpr", "ner")} == {"xnli": "seq_cls", "wpr": "rank",
                                                                     "ner": "token_cls"}
    assert all(TASKS[t].languages[0] == "en" for t in TASKS if t != "sib200")  # sib200: Flores codes
    assert get_task("PAWS-X") is get_task("pawsx")
    assert get_task("qadsm").label_id("Good") == get_task("qadsm").label_id("1") == 1


def test_unknown_task_lists_known():
    with pytest.raises(SdqConfigError, match="xnli.*pos"):
        get_task("mnli")


@pytest.mark.parametrize("task", XGLUE)
def test_every_task_on_fixture(root, task):
    spec = get_task(task)
    assert available_languages(root, task, "dev") == list(spec.languages[:2])
    assert available_languages(root, task, "train") == ["en"]
    for lang, split in [("en", "train"), ("en", "dev"), (spec.languages[1], "test")]:
        rows = read_split(root, task, lang, split)
        assert len(rows) == 12
        if spec.is_token_task:
            assert all(len(r["tokens"]) == len(r["labels"]) > 0 for r in rows)
            assert all(0 <= y < spec.num_labels for r in rows for y in r["labels"])
        else:
            assert {r["label"] for r in rows} <= set(range(spec.num_labels))
            assert all(isinstance(r["text"], str) and r["text_pair"] for r in rows)
            groups = [r["group"] for r in rows]
            assert groups == ([i // 3 for i in range(12)] if task == "wpr" else [None] * 12)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_handwritten_sentence_files(tmp_path):
    _write(tmp_path / "XNLI/multinli.train.en.tsv", "premise\thypo\tlabel\nA\tB\tcontradictory\nC\tD\tneutral\n")
    _write(tmp_path / "QADSM/xglue.qadsm.de.dev", "q1\tTitel\tBeschreibung\tGood\nq2\tT\tD\t0\n")
    _write(tmp_path / "WPR/xglue.wpr.fr.test", "a\tt1\ts1\t4\nb\tt2\ts2\t0\na\tt3\ts3\t2\n")
    _write(tmp_path / "PAWSX/de/dev_2k.tsv", "id\tsentence1\tsentence2\tlabel\n7\tX\tY\t1\n")
    _write(tmp_path / "NC/xglue.nc.ru.dev", "Title\tBody\tautos\n")
    assert read_split(tmp_path, "xnli", "en", "train") == [
        {"text": "A", "text_pair": "B", "label": 0, "group": None},
        {"text": "C", "text_pair": "D", "label": 2, "group": None},
    ]
    assert read_split(tmp_path, "qadsm", "de", "dev") == [
        {"text": "q1", "text_pair": "Titel Beschreibung", "label": 1, "group": None},
        {"text": "q2", "text_pair": "T D", "label": 0, "group": None},
    ]
    wpr = read_split(tmp_path, "wpr", "fr", "test")
    assert [(r["text_pair"], r["label"], r["group"]) for r in wpr] == [("t1 s1", 4, 0), ("t2 s2", 0, 1),
                                                                        ("t3 s3", 2, 0)]
    assert read_split(tmp_path, "pawsx", "de", "dev") == [{"text": "X", "text_pair": "Y", "label": 1,
                                                          "group": None}]
    assert read_split(tmp_path, "nc", "ru", "dev")[0]["label"] == 9  # autos is the 10th category


def test_handwritten_token_file(tmp_path):
    _write(tmp_path / "NER/nl.test", "-DOCSTART- O\n\nJan B-PER\nwoont\tO\nin O\nDen B-LOC\nHaag I-LOC\n\n\nEU B-ORG\n")
    rows = read_split(tmp_path, "ner", "nl", "test")
    assert rows == [
        {"tokens": ["Jan", "woont", "in", "Den", "Haag"], "labels": [1, 0, 0, 5, 6]},
        {"tokens": ["EU"], "labels": [3]},
    ]


def test_missing_file(tmp_path):
    with pytest.raises(SdqDataError, match=r"XNLI/de\.dev.*missing.*data\.root"):
        read_split(tmp_path, "xnli", "de", "dev")


def test_empty_file(tmp_path):
    _write(tmp_path / "POS/en.dev", "\n\n")
    with pytest.raises(SdqDataError, match=r"POS/en\.dev: file is empty"):
        read_split(tmp_path, "pos", "en", "dev")


def test_wrong_field_count_names_line(tmp_path):
    p = _write(tmp_path / "QAM/xglue.qam.fr.dev", "q\tp\t1\nq\tp\t0\nq only\t1\n")
    with pytest.raises(SdqDataError) as e:
        read_split(tmp_path, "qam", "fr", "dev")
    assert f"{p}:3:" in str(e.value) and "2 tab-separated fields, expected 3" in str(e.value)
    assert "\n" not in str(e.value)


def test_label_outside_set_names_line(tmp_path):
    p = _write(tmp_path / "POS/de.test", "Das DET\nHaus NOUN\n\nLauf VERBB\n")
    with pytest.raises(SdqDataError) as e:
        read_split(tmp_path, "pos", "de", "test")
    assert f"{p}:4:" in str(e.value) and "'VERBB'" in str(e.value) and "PROPN" in str(e.value)


def test_token_line_with_three_fields(tmp_path):
    p = _write(tmp_path / "NER/es.dev", "Madrid B-LOC\nes O extra\n")
    with pytest.raises(SdqDataError, match=rf"{p}:2: 3 fields"):
        read_split(tmp_path, "ner", "es", "dev")


def test_bad_split_name(tmp_path):
    with pytest.raises(SdqConfigError, match="validation"):
        split_path(tmp_path, "xnli", "en", "validation")


@pytest.mark.skipif(not MINI.is_dir(), reason=f"mini-xglue not found at {MINI}")
def test_mini_xglue_real_data():
    assert available_languages(MINI, "xnli", "test") == list(get_task("xnli").languages)
    pos_langs = available_languages(MINI, "pos", "dev")
    assert "de" not in pos_langs and "pl" not in pos_langs and len(pos_langs) == 16
    train = read_split(MINI, "xnli", "en", "train")
    dev = read_split(MINI, "xnli", "de", "dev")
    assert (len(train), len(dev)) == (1488, 501)
    assert {r["label"] for r in train} == {0, 1, 2}
    th = read_split(MINI, "pos", "th", "test")
    assert len(th) == 500 and all(len(r["tokens"]) == len(r["labels"]) for r in th)
