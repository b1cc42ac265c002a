"""A fine-tuned Hugging Face model as the teacher: ``teacher.ckpt=<save_pretrained dir | hub id>``.

Tiny XLM-R classifiers are written with plain ``transformers`` (``save_pretrained`` of the model and its
tokenizer) and used as ``teacher.ckpt=`` for PTQ and SDQ runs on the tiny XNLI fixture: no stage 1, the
student starts from the saved weights, the run records the model's name, path and labels; bad teachers
(other labels, a token head for a sentence task, no tokenizer, a hub id offline) give one ``error:`` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import (
    AutoModelForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
)

import sdq.pipeline
from sdq.cli import EXIT_USER_ERROR, guarded
from sdq.data.synthetic import write_fixture
from sdq.models import load_tokenizer
from sdq.models.backbone import TINY
from sdq.models.hf_teacher import hf_model_ref, hf_teacher_config, load_hf_teacher, model_tag

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
XNLI = ["contradiction", "entailment", "neutral"]


def save_classifier(dst: Path, labels: list[str], cls=XLMRobertaForSequenceClassification, seed: int = 0,
                    tokenizer: bool = True) -> Path:
    """A random tiny XLM-R classifier with ``labels`` as its id2label, saved as a user would."""
    cfg = XLMRobertaConfig(**TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    torch.manual_seed(seed)
    cls(cfg).save_pretrained(str(dst))
    if tokenizer:
        load_tokenizer("tiny").save_pretrained(str(dst))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hf_teacher")
    return {
        "root": write_fixture(tmp / "data", tasks=["xnli"], n=12),
        "good": save_classifier(tmp / "my-xnli-teacher", XNLI),
        "shuffled": save_classifier(tmp / "shuffled", ["neutral", "contradiction", "entailment"], seed=1),
        "other_labels": save_classifier(tmp / "sentiment", ["negative", "neutral", "positive"]),
        "token": save_classifier(tmp / "tagger", XNLI, cls=XLMRobertaForTokenClassification),
        "no_tokenizer": save_classifier(tmp / "bare", XNLI, tokenizer=False),
    }


def compose_run(files: dict[str, Path], tmp: Path, teacher: str | Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=tiny", "task=xnli", f"data.root={files['root']}", f"teacher.ckpt={teacher}",
            f"teacher.cache_dir={tmp / 'teacher_cache'}", "logger=none", "data.batch_size=4",
            "data.eval_batch_size=8", "method.calibrate_batches=1", "method.calibrate_multilingual=0",
            "trainer.enable_progress_bar=false", *overrides])


@pytest.fixture
def spy(monkeypatch) -> dict:
    """Records the student and teacher weights the stage starts from, the run's tags, and any stage 1."""
    seen: dict = {"finetune": 0}
    make_module, fit_and_test = sdq.pipeline.make_module, sdq.pipeline.fit_and_test

    def record_module(student, teacher, *args, **kwargs):
        seen["student"] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        seen["teacher"] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        return make_module(student, teacher, *args, **kwargs)

    def record_fit(*args, **kwargs):
        seen["tags"] = dict(kwargs["tags"])
        return fit_and_test(*args, **kwargs)

    def no_stage_one(*args, **kwargs):
        seen["finetune"] += 1
        raise AssertionError("stage 1 ran")

    monkeypatch.setattr(sdq.pipeline, "make_module", record_module)
    monkeypatch.setattr(sdq.pipeline, "fit_and_test", record_fit)
    monkeypatch.setattr(sdq.pipeline, "finetune_teacher", no_stage_one)
    return seen


def saved_state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).state_dict()


@pytest.mark.parametrize("method", ["ptq", "sdq"])
def test_hf_dir_teacher_skips_stage_one_and_records_its_name_and_labels(files, tmp_path, spy, method) -> None:
    extra = ["method=sdq", "method.epochs=1"] if method == "sdq" else ["method=ptq"]
    cfg = compose_run(files, tmp_path, files["good"], *extra)
    run_dir = tmp_path / "run"
    results = sdq.pipeline.run(cfg, run_dir=run_dir)

    assert spy["finetune"] == 0 and not (run_dir / "teacher").exists()
    assert not (tmp_path / "teacher_cache").exists()  # nothing fine-tuned, nothing cached
    saved = saved_state(files["good"])
    for name, weights in (("student", spy["student"]), ("teacher", spy["teacher"])):
        assert set(saved) <= set(weights), name
        assert all(torch.equal(weights[k], v) for k, v in saved.items()), name

    path = str(files["good"].resolve())
    written = json.loads((run_dir / "results.json").read_text())
    assert written == json.loads(json.dumps(results, default=str))
    assert written["model"] == "my-xnli-teacher" and written["teacher_ckpt"] == path
    assert spy["tags"]["model"] == "my-xnli-teacher"  # W&B tags
    assert written["labels"] == {"id2label": {"0": "contradiction", "1": "entailment", "2": "neutral"},
                                 "label2id": {"contradiction": 0, "entailment": 1, "neutral": 2}}
    assert written["config"]["model"]["name_or_path"] == path
    assert set(written["xnli"]["test"]) == {"en", "ar", "avg"}
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model_cfg = ckpt["sdq"]["config"]["model"]
    assert model_cfg["name"] == "my-xnli-teacher" and model_cfg["name_or_path"] == path
    assert model_cfg["id2label"] == {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert model_cfg["label2id"] == {"contradiction": 0, "entailment": 1, "neutral": 2}


def test_run_dir_tag_names_the_hf_teacher(files) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny", f"teacher.ckpt={files['good']}"],
                      return_hydra_config=True)
        plain = compose(config_name="config", overrides=["model=tiny"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"outputs/{cfg.task.name}/my-xnli-teacher/")
    assert OmegaConf.select(plain, "hydra.run.dir").startswith(f"outputs/{plain.task.name}/tiny/")
    assert model_tag("tiny", "org/xnli-model") == "org--xnli-model"
    assert model_tag("tiny", "runs/teacher.safetensors") == "tiny"  # a weights file keeps model.name
    assert hf_model_ref("runs/teacher.ckpt") is None and hf_model_ref(None) is None
    assert hf_model_ref(str(files["good"])) == str(files["good"].resolve())


def test_labels_in_another_order_are_mapped_by_name(files) -> None:
    ref = str(files["shuffled"])
    teacher = load_hf_teacher(ref, hf_teacher_config(ref, "seq_cls"), XNLI)
    raw = AutoModelForSequenceClassification.from_pretrained(ref, dtype=torch.float32).eval()
    ids = torch.tensor([[0, 200, 300, 400, 2], [0, 500, 600, 2, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        got, want = teacher(input_ids=ids, attention_mask=mask).logits, raw(input_ids=ids, attention_mask=mask).logits
    # saved order [neutral, contradiction, entailment] -> data order [contradiction, entailment, neutral]
    assert torch.equal(got, want[:, [1, 2, 0]])
    assert teacher.config.id2label == {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert teacher.config.label2id == {"contradiction": 0, "entailment": 1, "neutral": 2}


@pytest.mark.parametrize(("case", "needles"), [
    ("other_labels", ["sentiment", "['negative', 'neutral', 'positive']", "['contradiction', 'entailment', 'neutral']"]),
    ("token", ["tagger", "XLMRobertaForTokenClassification", "task xnli", "ForSequenceClassification"]),
    ("no_tokenizer", ["bare", "no tokenizer", "tokenizer.save_pretrained"]),
    ("hub_offline", ["teacher.ckpt=no-such-org/no-such-model", "huggingface-cli download"]),
], ids=["labels", "kind", "tokenizer", "hub_offline"])
def test_bad_hf_teacher_is_one_error_before_training(files, tmp_path, capsys, spy, monkeypatch, case,
                                                     needles) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = "no-such-org/no-such-model" if case == "hub_offline" else files[case]
    cfg = compose_run(files, tmp_path, teacher, "method=sdq")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        guarded(sdq.pipeline.run)(cfg, run_dir=tmp_path / "run")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == EXIT_USER_ERROR and len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "tags" not in spy and "student" not in spy and spy["finetune"] == 0  # failed before any training
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
