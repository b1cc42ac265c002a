"""SIB-200: the subset shipped in the package, its reader, the sib200 task over the embedded subset
and over a full-layout folder, subset rebuilding, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdq.data import sib200
from sdq.data.datamodule import XGLUEDataModule
from sdq.data.synthetic import write_split
from sdq.data.tasks import get_task
from sdq.data.xglue import read_split
from sdq.errors import SdqConfigError, SdqDataError

SUBSET = sib200.subset_dir()
XNLI_15 = ("eng_Latn", "arb_Arab", "bul_Cyrl", "deu_Latn", "ell_Grek", "spa_Latn", "fra_Latn", "hin_Deva",
           "rus_Cyrl", "swh_Latn", "tha_Thai", "tur_Latn", "urd_Arab", "vie_Latn", "zho_Hans")
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def tok():
    from sdq.models import load_tokenizer, resolve_backbone

    return load_tokenizer(resolve_backbone("tiny"))


def full_layout(root: Path, langs=("eng_Latn", "deu_Latn", "yor_Latn"), n: int = 14) -> Path:
    """A full-SIB-200-style folder: every split of every language, plain ``.tsv``."""
    spec = get_task("sib200")
    for lang in langs:
        for split in sib200.SPLITS:
            write_split(root, spec, lang, split, n, seed=0)
    return root


def test_task_spec():
    spec = get_task("sib200")
    assert (spec.kind, spec.metric, spec.num_labels, spec.open_languages) == ("seq_cls", "acc", 7, True)
    assert spec.labels == ("science/technology", "travel", "politics", "sports", "health", "entertainment",
                           "geography")
    assert spec.languages == sib200.SUBSET_LANGUAGES and spec.languages[0] == "eng_Latn"
    assert get_task("SIB-200") is spec


def test_subset_languages_and_layout():
    langs = sib200.discover_languages(SUBSET, "test")
    assert langs == list(sib200.SUBSET_LANGUAGES) and len(langs) == 50
    assert set(XNLI_15) <= set(langs) and langs[0] == "eng_Latn" and langs[1:] == sorted(langs[1:])
    assert sib200.discover_languages(SUBSET, "train") == sib200.discover_languages(SUBSET, "dev") == ["eng_Latn"]
    scripts = {lang.split("_")[1] for lang in langs}
    assert {"Latn", "Cyrl", "Arab", "Deva", "Beng", "Hans", "Hant", "Jpan", "Hang", "Hebr", "Grek", "Ethi",
            "Geor", "Armn", "Taml", "Telu", "Thai"} <= scripts
    files = sorted(p.relative_to(SUBSET).as_posix() for p in SUBSET.rglob("*") if p.is_file())
    assert len(files) == 50 + 2 + 2 and "LICENSE" in files and "README.md" in files
    assert all(f.endswith(".tsv.gz") for f in files if f not in ("LICENSE", "README.md"))
    assert sum((SUBSET / f).stat().st_size for f in files) < 1_200_000


def test_subset_rows_parse_and_are_parallel():
    sizes = {s: len(read_split(SUBSET, "sib200", "eng_Latn", s)) for s in sib200.SPLITS}
    assert sizes == {"train": 701, "dev": 99, "test": 204}
    train = read_split(SUBSET, "sib200", "eng_Latn", "train")
    assert sorted({r["label"] for r in train}) == list(range(7))
    assert train[0] == {"text": train[0]["text"], "text_pair": None, "label": 6, "group": None, "index_id": "431"}
    assert train[0]["text"].startswith("Turkey is encircled by seas on three sides")
    ref = [(r["index_id"], r["label"]) for r in read_split(SUBSET, "sib200", "eng_Latn", "test")]
    for lang in sib200.SUBSET_LANGUAGES:
        rows = read_split(SUBSET, "sib200", lang, "test")
        assert [(r["index_id"], r["label"]) for r in rows] == ref, lang
        assert all(r["text"].strip() for r in rows), lang


def test_attribution_and_licence_notice():
    licence = (SUBSET / "LICENSE").read_text(encoding="utf-8")
    readme = (SUBSET / "README.md").read_text(encoding="utf-8")
    for text in (licence, readme):
        assert "CC BY-SA 4.0" in text and "Adelani" in text and "Apache" in text
        assert "https://creativecommons.org/licenses/by-sa/4.0/" in text
    assert "python -m sdq.data.sib200" in readme


def test_reader_errors(tmp_path: Path):
    bad = tmp_path / "eng_Latn" / "test.tsv"
    bad.parent.mkdir()
    bad.write_text("index_id\tcategory\ttext\n1\tsports\tok\n2\tweather\tnot a label\n", encoding="utf-8")
    with pytest.raises(SdqDataError, match=r"test.tsv:3: label 'weather' is not a sib200 label"):
        sib200.read_rows(bad)
    bad.write_text("id\tlabel\tsentence\n1\tsports\tok\n", encoding="utf-8")
    with pytest.raises(SdqDataError, match=r"test.tsv:1: header lacks column\(s\) index_id, category, text"):
        sib200.read_rows(bad)
    bad.write_text("index_id\tcategory\ttext\n1\tsports\n", encoding="utf-8")
    with pytest.raises(SdqDataError, match=r"test.tsv:2: 2 tab-separated fields, expected 3"):
        sib200.read_rows(bad)
    bad.write_text("", encoding="utf-8")
    with pytest.raises(SdqDataError, match="file is empty"):
        sib200.read_rows(bad)
    with pytest.raises(SdqDataError, match="missing SIB-200 file"):
        sib200.read_rows(tmp_path / "deu_Latn" / "test.tsv")


def test_datamodule_on_embedded_subset(tok):
    dm = XGLUEDataModule("sib200", root=None, tokenizer=tok, batch_size=4, eval_batch_size=8,
                         val_languages=["eng_Latn"], limit_train=8, limit_eval=8)
    dm.setup(None)
    assert dm.root == SUBSET and dm.train_lang == "eng_Latn"
    assert dm.val_languages == ["eng_Latn"] and dm.test_languages == list(sib200.SUBSET_LANGUAGES)
    assert (dm.num_labels, dm.head, dm.metric) == (7, "seq_cls", "acc")
    sizes = dm.sizes()
    assert sizes["train/eng_Latn"] == 8 and sizes["dev/eng_Latn"] == 8 and len(sizes) == 2 + 50
    assert all(sizes[f"test/{lang}"] == 8 for lang in sib200.SUBSET_LANGUAGES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].dtype == torch.long
    assert batch["labels"].shape == (4,) and set(batch["labels"].tolist()) <= set(range(7))
    assert len(dm.test_dataloader()) == 50
    with pytest.raises(SdqConfigError, match="no sib200 dev file for deu_Latn"):  # the subset: English dev only
        XGLUEDataModule("sib200", tokenizer=tok, languages=["deu_Latn"])


def test_datamodule_on_full_layout_discovers_its_languages(tmp_path: Path, tok):
    root = full_layout(tmp_path / "sib200")
    (root / "README.md").write_text("not a language\n", encoding="utf-8")
    dm = XGLUEDataModule("sib200", root=root, tokenizer=tok, batch_size=4)
    assert dm.test_languages == dm.val_languages == ["eng_Latn", "deu_Latn", "yor_Latn"]
    dm.setup(None)
    assert dm.sizes() == {"train/eng_Latn": 14, "dev/eng_Latn": 14, "dev/deu_Latn": 14, "dev/yor_Latn": 14,
                          "test/eng_Latn": 14, "test/deu_Latn": 14, "test/yor_Latn": 14}
    only = XGLUEDataModule("sib200", root=root, tokenizer=tok, languages=["yor_Latn"])  # not in the subset
    assert only.test_languages == ["yor_Latn"]
    with pytest.raises(SdqConfigError, match=r"no sib200 dev file for xho_Latn .*found: eng_Latn, deu_Latn, yor_Latn"):
        XGLUEDataModule("sib200", root=root, tokenizer=tok, languages=["xho_Latn"])
    with pytest.raises(SdqDataError, match="point data.root at a SIB-200 folder"):
        XGLUEDataModule("sib200", root=tmp_path / "empty", tokenizer=tok)


def test_resolve_config_accepts_languages_of_the_data_folder():
    from hydra import compose, initialize_config_dir

    from sdq.config import resolve_config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=sib200", "data.languages=[eng_Latn,yor_Latn]"])
    cfg = resolve_config(cfg)
    assert (cfg.task.epochs, cfg.task.lr, list(cfg.task.val_languages)) == (4, 1e-4, ["eng_Latn"])


def test_make_subset_rebuilds_byte_for_byte(tmp_path: Path):
    src = full_layout(tmp_path / "full")
    sizes = sib200.make_subset(src, tmp_path / "a", languages=["yor_Latn"])
    assert sorted(sizes) == ["eng_Latn/dev.tsv.gz", "eng_Latn/test.tsv.gz", "eng_Latn/train.tsv.gz",
                             "yor_Latn/test.tsv.gz"]
    sib200.make_subset(src, tmp_path / "b", languages=["yor_Latn"])
    for name in [*sizes, "LICENSE", "README.md"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert sib200.read_rows(tmp_path / "a" / "yor_Latn" / "test.tsv.gz") == sib200.read_rows(
        src / "yor_Latn" / "test.tsv")
    with pytest.raises(SdqDataError, match=r"no test.tsv for xho_Latn"):
        sib200.make_subset(src, tmp_path / "c", languages=["xho_Latn"])
    assert sib200.main([str(tmp_path / "nowhere"), str(tmp_path / "d")]) == 2


def test_tiny_end_to_end_ptq(tmp_path: Path):
    from hydra import compose, initialize_config_dir

    from sdq.pipeline import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny", "task=sib200", "method=ptq", "data.limit_train=8", "data.limit_eval=8",
            "trainer.fast_dev_run=true", "logger=none", f"teacher.cache_dir={tmp_path / 'teachers'}",
            "data.batch_size=4", "data.eval_batch_size=8",
        ])
    results = run(cfg, run_dir=tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    test = on_disk["sib200"]["test"]
    assert list(test) == [*sib200.SUBSET_LANGUAGES, "avg"] == list(results["sib200"]["test"])
    assert list(on_disk["sib200"]["dev"]) == ["eng_Latn", "avg"]
    assert all(0.0 <= test[lang] <= 100.0 for lang in test)
    assert set(on_disk["fidelity"]["sib200"]["test"]) >= set(sib200.SUBSET_LANGUAGES)
