"""Own data as a task (conf/task/custom.yaml): CSV / JSONL / CoNLL files and a ``datasets`` folder, own
label names, any language, train -> quantize -> per-language results; bad input and fail-fast checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sdq.cli import EXIT_USER_ERROR, guarded
from sdq.data.datamodule import XGLUEDataModule
from sdq.data.own_task import OwnTaskData
from sdq.data.synthetic import write_fixture
from sdq.data.task_config import task_from_config
from sdq.data.xglue import split_path
from sdq.errors import SdqConfigError, SdqDataError

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = ("negative", "neutral", "positive")
WORDS = {"negative": "bad awful broken", "neutral": "ok fine average", "positive": "great lovely perfect"}
QUICK = ["model=tiny", "logger=none", "data.batch_size=4", "data.eval_batch_size=4", "task.epochs=1",
         "method.epochs=1", "checkpoint.every_n_train_steps=0", "trainer.enable_progress_bar=false",
         "diagnostics.layer_errors=false"]


@pytest.fixture(scope="module")
def tok():
    from sdq.models import load_tokenizer, resolve_backbone

    return load_tokenizer(resolve_backbone("tiny"))


def csv_rows(langs: tuple[str, ...], n: int, label_col: str = "sentiment") -> list[str]:
    rows = [f"review,{label_col},lang"]
    for lang in langs:
        for i in range(n):
            label = SENTIMENT[i % 3]
            rows.append(f'"{WORDS[label]} {lang} {i}, really",{label},{lang}')
    return rows


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sentiment_csv(root: Path) -> Path:
    """train.csv (English), dev.csv / test.csv with a ``lang`` column (en, it, xx: any code)."""
    write(root / "train.csv", csv_rows(("en",), 12))
    for split in ("dev", "test"):
        write(root / f"{split}.csv", csv_rows(("en", "it", "xx"), 6))
    return root


def make_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_dir_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.ckpt"))


# ------------------------------------------------------------------------------------ end to end
def test_csv_task_with_language_column_one_command(tmp_path: Path) -> None:
    """The documented command: own label names, one eval file per split with a language column."""
    root = sentiment_csv(tmp_path / "data")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *QUICK, "task=custom", "task.name=reviews",
           f"task.train={root}/train.csv", f"task.eval='{root}/{{split}}.csv'", "task.columns.text=review",
           "task.columns.label=sentiment", "task.columns.language=lang", "method=sdq", "quant=w8a8",
           f"teacher.cache_dir={tmp_path / 'teachers'}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["reviews"]["test"]) == ["en", "it", "xx", "avg"]
    assert list(results["reviews"]["dev"]) == ["en", "it", "xx", "avg"]
    assert set(results["fidelity"]["reviews"]["test"]) == {"en", "it", "xx", "avg"}
    assert results["labels"]["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["sdq"]["config"]["task"]["labels"] == list(SENTIMENT)
    # a distilling student is selected on its dev agreement with the teacher (a CE student on the dev metric)
    assert any("'monitor': 'val/reviews/avg/agree'" in k for k in ckpt["callbacks"]), list(ckpt["callbacks"])


def test_saved_datasets_folder(tmp_path: Path) -> None:
    """A DatasetDict saved with save_to_disk: class-label names are the label set, per-language results."""
    import datasets

    from sdq.pipeline import run

    names = ["pos", "neg"]  # ClassLabel order, not alphabetical: kept as the model's output order
    features = datasets.Features({"sentence": datasets.Value("string"), "language": datasets.Value("string"),
                                  "y": datasets.ClassLabel(names=names)})

    def split(langs, n):
        rows = [(f"{'great' if i % 2 else 'awful'} {lang} {i}", lang, i % 2) for lang in langs for i in range(n)]
        return datasets.Dataset.from_dict({"sentence": [r[0] for r in rows], "language": [r[1] for r in rows],
                                           "y": [r[2] for r in rows]}, features=features)

    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": split(["en"], 12), "validation": split(["en", "sw"], 4),
                          "test": split(["en", "sw", "yo"], 4)}).save_to_disk(str(folder))
    cfg = make_cfg([*QUICK, "task=custom", "task.name=ds_task", f"task.dataset={folder}",
                    "task.columns.text=sentence", "task.columns.label=y", "task.columns.language=language",
                    "method=qat_kd", f"teacher.cache_dir={tmp_path / 'teachers'}"])
    results = run(cfg, run_dir=tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(on_disk["ds_task"]["test"]) == ["en", "sw", "yo", "avg"] == list(results["ds_task"]["test"])
    assert list(on_disk["ds_task"]["dev"]) == ["en", "sw", "avg"]
    assert on_disk["labels"]["id2label"] == {"0": "pos", "1": "neg"}


def test_conll_token_task_end_to_end(tmp_path: Path) -> None:
    """CoNLL files (4 columns: token, POS, chunk, tag), one file per language, entity F1 on own tags."""
    from sdq.pipeline import run

    def sentences(n):
        lines = []
        for i in range(n):
            lines += ["Anna NNP B-NP B-PER", "likes VBZ B-VP O", f"Paris{i} NNP B-NP B-CITY", ""]
        return lines

    d = tmp_path / "ner"
    write(d / "train.conll", sentences(8))
    for lang in ("en", "fi"):
        for s in ("dev", "test"):
            write(d / f"{lang}.{s}.conll", sentences(3))
    cfg = make_cfg([*QUICK, "task=custom", "task.name=cities", "task.kind=token_cls", "task.metric=f1",
                    f"task.train={d}/train.conll", f"task.eval='{d}/{{lang}}.{{split}}.conll'",
                    "method=qat_kd", "trainer.fast_dev_run=true", f"teacher.cache_dir={tmp_path / 't'}"])
    results = run(cfg, run_dir=tmp_path / "run")
    assert list(results["cities"]["test"]) == ["en", "fi", "avg"]
    assert results["labels"]["id2label"] == {0: "B-CITY", 1: "B-PER", 2: "O"}


# ------------------------------------------------------------------------------------ readers
def own(tmp_path: Path, **task) -> OwnTaskData:
    return OwnTaskData(task_from_config({"name": "t", "kind": "seq_cls", "metric": "acc", **task}))


def test_label_set_read_from_train_data_in_order(tmp_path: Path) -> None:
    write(tmp_path / "train.jsonl", [json.dumps({"text": f"t{i}", "label": s}) for i, s in enumerate([10, 2, 1, 2])])
    write(tmp_path / "dev.jsonl", [json.dumps({"text": "a", "label": 1})])
    write(tmp_path / "test.jsonl", [json.dumps({"text": "b", "label": "10"})])
    data = own(tmp_path, train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "{split}.jsonl"))
    assert data.labels == ("1", "2", "10") and data.from_train
    assert [r["label"] for r in data.rows(None, "train")] == [2, 1, 0, 1]
    assert data.languages("test") == ["en"] and data.rows("en", "test")[0]["label"] == 2
    write(tmp_path / "train.csv", ["text,label", "x,b", "y,a", "z,c"])
    write(tmp_path / "dev.csv", ["text,label", "x,a"])
    write(tmp_path / "test.csv", ["text,label", "x,c"])
    assert own(tmp_path, train=str(tmp_path / "train.csv"), eval=str(tmp_path / "{split}.csv")).labels == ("a", "b", "c")
    given = own(tmp_path, train=str(tmp_path / "train.csv"), eval=str(tmp_path / "{split}.csv"), labels=["c", "b", "a"])
    assert given.labels == ("c", "b", "a") and not given.from_train


def test_jsonl_pair_task_per_language_files(tmp_path: Path, tok) -> None:
    rows = [{"q": "is it red", "a": "it is red", "ok": "yes"}, {"q": "is it blue", "a": "no", "ok": "no"}]
    write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows * 3])
    for lang in ("de", "pt"):
        for s in ("dev", "test"):
            write(tmp_path / lang / f"{s}.jsonl", [json.dumps(r) for r in rows])
    spec = task_from_config({"name": "qa", "kind": "pair_cls", "metric": "acc", "train": str(tmp_path / "train.jsonl"),
                             "eval": str(tmp_path / "{lang}" / "{split}.jsonl"),
                             "columns": {"text": "q", "text_pair": "a", "label": "ok"}})
    assert (spec.kind, spec.source.format) == ("seq_cls", "jsonl")
    dm = XGLUEDataModule(spec, tokenizer=tok, batch_size=2)
    dm.setup()
    assert dm.labels == ("no", "yes") and dm.num_labels == 2 and dm.train_lang == "en"
    assert dm.val_languages == dm.test_languages == ["de", "pt"]
    assert dm.sizes() == {"train/en": 6, "dev/de": 2, "dev/pt": 2, "test/de": 2, "test/pt": 2}
    ids = dm._test["pt"][0]["input_ids"]
    assert ids == tok("is it red", "it is red", truncation="longest_first", max_length=128)["input_ids"]
    assert dm._test["pt"][0]["labels"] == 1


def test_jsonl_token_task_with_language_column(tmp_path: Path) -> None:
    def line(lang, tags):
        return json.dumps({"words": [f"w{i}" for i in range(len(tags))], "tags": tags, "lang": lang})

    write(tmp_path / "train.jsonl", [line("en", ["O", "B-X"]), line("en", ["B-Y", "O", "O"])])
    for s in ("dev", "test"):
        write(tmp_path / f"{s}.jsonl", [line("fr", ["O", "B-Y"]), line("en", ["B-X"])])
    data = OwnTaskData(task_from_config({
        "name": "tok", "kind": "token_cls", "metric": "f1", "train": str(tmp_path / "train.jsonl"),
        "eval": str(tmp_path / "{split}.jsonl"), "columns": {"text": "words", "label": "tags", "language": "lang"}}))
    assert data.labels == ("B-X", "B-Y", "O") and data.languages("test") == ["en", "fr"]
    assert data.rows("fr", "test") == [{"tokens": ["w0", "w1"], "labels": [2, 1]}]


def test_xglue_task_configs_are_the_registered_tasks() -> None:
    """conf/task/<xglue task>.yaml declares kind, metric, layout, languages, labels and aliases: the same
    spec as the registry (so the readers, label ids and results stay as they were)."""
    from omegaconf import OmegaConf

    from sdq.data.tasks import get_task

    for name in ("xnli", "pawsx", "nc", "qam", "qadsm", "wpr", "ner", "pos", "sib200"):
        cfg = OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")
        assert task_from_config(cfg) == get_task(name), name
    assert OmegaConf.load(REPO / "conf" / "task" / "xnli.yaml").kind == "pair_cls"


def test_rank_groups_and_text_pair_columns(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", ["qid\tquery\ttitle\tsnippet\trel", "q1\tcats\tCats\tall about cats\t2",
                                   "q2\tdogs\tDogs\tdog facts\t0", "q1\tcats\tKittens\tsmall cats\t1"])
    for s in ("dev", "test"):
        write(tmp_path / f"{s}.tsv", ["qid\tquery\ttitle\tsnippet\trel", "a\tx\tt\ts\t1", "b\ty\tt\ts\t0"])
    data = OwnTaskData(task_from_config({
        "name": "r", "kind": "rank", "metric": "ndcg", "train": str(tmp_path / "train.tsv"),
        "eval": str(tmp_path / "{split}.tsv"),
        "columns": {"text": "query", "text_pair": ["title", "snippet"], "label": "rel", "query": "qid"}}))
    assert data.rows(None, "train") == [
        {"text": "cats", "text_pair": "Cats all about cats", "label": 2, "group": 0},
        {"text": "dogs", "text_pair": "Dogs dog facts", "label": 0, "group": 1},
        {"text": "cats", "text_pair": "Kittens small cats", "label": 1, "group": 0},
    ]


def test_user_task_yaml_in_own_config_dir(tmp_path: Path) -> None:
    """``<dir>/task/reviews.yaml`` extending conf/task/custom.yaml, chosen with hydra.searchpath."""
    root = sentiment_csv(tmp_path / "data")
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "reviews.yaml").write_text(
        f"defaults: [custom, _self_]\nname: reviews\ntrain: {root}/train.csv\neval: '{root}/{{split}}.csv'\n"
        "columns: {text: review, label: sentiment, language: lang}\nlabels: [positive, neutral, negative]\n")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                                       "task=reviews"])
    spec = task_from_config(cfg.task)
    assert (spec.name, spec.labels, spec.source.columns.text, cfg.task.lr) == (
        "reviews", ("positive", "neutral", "negative"), "review", 5e-5)
    assert OwnTaskData(spec).languages("dev") == ["en", "it", "xx"]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("case", "needles"), [
    ("missing_column", ["train.csv", "'stars'", "task.columns.label", "columns found: review, sentiment, lang"]),
    ("eval_label", ["test.csv:3:", "'great'", "negative, neutral, positive", "task.labels"]),
    ("empty", ["dev.csv", "empty"]),
    ("no_split", ["task.eval", "{split}"]),
    ("bad_kind", ["task.kind='clf'", "pair_cls"]),
    ("unreadable_dataset", ["task.dataset=", "unreadable dataset"]),
    ("offline_hub", ["task.dataset=someone/reviews", "offline"]),
    ("no_data", ["task: no data", "task.train=<file>", "task.dataset="]),
    ("no_eval", ["task.eval is not set"]),
])
def test_bad_own_data_is_one_error(tmp_path: Path, case: str, needles: list[str], monkeypatch) -> None:
    root = sentiment_csv(tmp_path)
    task = {"name": "t", "kind": "seq_cls", "metric": "acc", "train": str(root / "train.csv"),
            "eval": str(root / "{split}.csv"), "columns": {"text": "review", "label": "sentiment", "language": "lang"}}
    if case == "missing_column":
        task["columns"]["label"] = "stars"
    elif case == "eval_label":
        write(root / "test.csv", ["review,sentiment,lang", "a,positive,en", "b,great,de"])
    elif case == "empty":
        (root / "dev.csv").write_text("\n")
    elif case == "no_split":
        task["eval"] = str(root / "test.csv")
    elif case == "bad_kind":
        task["kind"] = "clf"
    elif case == "unreadable_dataset":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "dataset_dict.json").write_text("{not json")
        task = {**task, "train": None, "eval": None, "dataset": str(tmp_path / "broken")}
    elif case == "no_data":
        task = {**task, "train": None, "eval": None}
    elif case == "no_eval":
        task["eval"] = None
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        task = {**task, "train": None, "eval": None, "dataset": "someone/reviews"}
    with pytest.raises((SdqConfigError, SdqDataError)) as e:
        OwnTaskData(task_from_config(task))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def _guarded_run(cfg, run_dir: Path, capsys) -> str:
    from sdq.pipeline import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        guarded(run)(cfg, run_dir=run_dir)
    err = capsys.readouterr().err
    assert exc.value.code == EXIT_USER_ERROR and err.count("error:") == 1, err
    return err


def test_malformed_test_file_fails_before_training(tmp_path: Path, capsys) -> None:
    """XGLUE: a test line lacking its label is found before stage 1 (no teacher, no checkpoint)."""
    root = write_fixture(tmp_path / "xglue", tasks=["xnli"], n=12)
    test = split_path(root, "xnli", "en", "test")
    test.write_text(test.read_text() + "a premise without its label\n")
    run_dir = tmp_path / "run"
    cfg = make_cfg([*QUICK, "task=xnli", f"data.root={root}", "method=sdq", f"teacher.cache_dir={tmp_path / 't'}"])
    err = _guarded_run(cfg, run_dir, capsys)
    assert f"{test}:13:" in err and "expected 3" in err
    assert run_dir_checkpoints(run_dir) == [] and not (run_dir / "teacher").exists()
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").rglob("*.safetensors"))


def test_own_data_bad_test_label_fails_before_training(tmp_path: Path, capsys) -> None:
    root = sentiment_csv(tmp_path / "data")
    write(root / "test.csv", csv_rows(("en", "it"), 3) + ["fine,meh,it"])
    run_dir = tmp_path / "run"
    cfg = make_cfg([*QUICK, "task=custom", f"task.train={root}/train.csv", f"task.eval='{root}/{{split}}.csv'",
                    "task.columns.text=review", "task.columns.label=sentiment", "task.columns.language=lang",
                    "method=sdq", f"teacher.cache_dir={tmp_path / 't'}"])
    err = _guarded_run(cfg, run_dir, capsys)
    assert f"{root / 'test.csv'}:8: label 'meh' is not in the label set" in err
    assert run_dir_checkpoints(run_dir) == [] and not (run_dir / "teacher").exists()
