"""Compose + fast_dev_run smoke test for every option of every config group (tiny model, fixtures)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sdq.config import resolve_config
from sdq.data.synthetic import write_fixture
from sdq.distill import DistillLoss
from sdq.errors import SdqConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(overrides: list[str], hydra_section: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_section)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("xglue"), n=12)


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    """Shared by the module's runs: stage-1 teachers are fine-tuned once per task."""
    return tmp_path_factory.mktemp("teachers")


def smoke(tmp_path: Path, root: Path, overrides: list[str], teachers: Path | None = None) -> dict:
    from sdq.pipeline import run

    cfg = make_cfg([
        "model=tiny", f"data.root={root}", "trainer.fast_dev_run=true", "logger=none",
        f"teacher.cache_dir={teachers or tmp_path / 'teachers'}", "data.batch_size=4", "data.eval_batch_size=4",
        *overrides,
    ])
    results = run(cfg, run_dir=tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk[cfg.task.name]["test"].keys() == results[cfg.task.name]["test"].keys()
    return results


@pytest.mark.parametrize("group", ["model", "task", "quant", "method", "trainer", "logger", "unlabeled", "experiment",
                                   "sweep"])
def test_every_option_composes(group: str) -> None:
    names = options(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        cfg = make_cfg([f"{group}={name}"], hydra_section=group == "sweep")
        resolve_config(cfg)
        if group == "sweep":
            assert cfg.hydra.sweeper.params, f"sweep={name} sets no sweep parameters"


@pytest.mark.parametrize("task", [t for t in options("task") if t not in ("sib200", "custom")])  # own tests
def test_fast_dev_run_every_task(task: str, tmp_path: Path, fixture_root: Path, teacher_cache: Path) -> None:
    results = smoke(tmp_path, fixture_root, [f"task={task}", "method=qat"], teacher_cache)
    test = results[task]["test"]
    assert "avg" in test and "en" in test
    assert set(results["fidelity"][task]["test"]["en"]) == {"agree", "kl"}


@pytest.mark.parametrize("method", options("method"))
def test_fast_dev_run_every_method(method: str, tmp_path: Path, fixture_root: Path, teacher_cache: Path) -> None:
    results = smoke(tmp_path, fixture_root, ["task=xnli", f"method={method}"], teacher_cache)
    assert results["method"] == method
    assert ("teacher" in results) == (method != "fp")


@pytest.mark.parametrize("quant", [q for q in options("quant") if q not in ("w8a8",)])
def test_fast_dev_run_every_quant(quant: str, tmp_path: Path, fixture_root: Path, teacher_cache: Path) -> None:
    results = smoke(tmp_path, fixture_root, ["task=xnli", "method=ptq", f"quant={quant}"], teacher_cache)
    report = results["quant_report"]
    assert report is not None


@pytest.mark.parametrize("logger", options("logger"))
def test_fast_dev_run_every_logger(logger: str, tmp_path: Path, fixture_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # fast_dev_run swaps the logger for a dummy: a real (1-step) run for the W&B check
    real = ["trainer.fast_dev_run=false", "+trainer.max_steps=1", "+trainer.limit_val_batches=1"]
    results = smoke(tmp_path, fixture_root, ["task=xnli", "method=fp", f"logger={logger}", *real])
    assert results["method"] == "fp"
    if logger == "wandb":  # offline run dir holds the per-language table logged by the pipeline
        tables = list((tmp_path / "run").glob("wandb/offline-run-*/files/media/table/per_language_*.table.json"))
        assert len(tables) == 1, sorted(p.name for p in (tmp_path / "run").rglob("*"))
        table = json.loads(tables[0].read_text())
        langs = {row[table["columns"].index("lang")] for row in table["data"]}
        assert langs == set(results["xnli"]["test"]) - {"avg"}


@pytest.mark.parametrize("method", options("method"))
def test_every_distillation_weight_is_a_key_of_every_method(method: str) -> None:
    """`method.loss.hidden=1.0` (no `+`) reaches DistillLoss; every method lists all its weights."""
    keys = set(inspect.signature(DistillLoss).parameters) - {"layer_map"}
    cfg = make_cfg([f"method={method}", "method.loss.hidden=1.0", "method.loss.attn_prob=0.5"])
    assert keys <= set(cfg.method.loss)
    loss = instantiate(cfg.method.loss)
    assert loss.weights["hidden"] == 1.0 and loss.weights["attn_prob"] == 0.5
    assert {"hidden", "attn_prob"} <= loss.needs
    if method == "fp":  # the root method restates DistillLoss's defaults: listing a key changes nothing
        params = inspect.signature(DistillLoss).parameters
        assert {k: v for k, v in make_cfg(["method=fp"]).method.loss.items() if k != "_target_"} == \
            {k: params[k].default for k in keys}


def test_bits_shortcut_sets_weight_and_embedding_bits() -> None:
    cfg = resolve_config(make_cfg(["bits=4"]))
    assert cfg.quant.weight.bits == 4 and cfg.quant.embedding.bits == 4 and cfg.quant.act.bits == 8
    assert make_cfg(["bits=4"], hydra_section=True).hydra.run.dir.split("/")[3] == "sdq-w8a8-b4"
    assert make_cfg([], hydra_section=True).hydra.run.dir.split("/")[3] == "sdq-w8a8"


@pytest.mark.parametrize("quant", ["w8a8", "w4", "kmeans4", "w2a8_lsq", "w4a8_g32", "w7a8_int8", "mixed_2p5", "binary2"])
@pytest.mark.parametrize("bits", [8, 5, 4])
def test_bits_gives_the_quant_config_of_setting_both_bits_by_hand(quant: str, bits: int) -> None:
    """``bits=N`` (the presets' ``${bits_or:..}``) = the preset with quant.weight.bits and
    quant.embedding.bits set to N after composing (what the former post-compose shortcut did)."""
    from sdq.config import quant_dict

    by_hand = make_cfg([f"quant={quant}", "method=sdq_noise"])
    by_hand.quant.weight.bits = by_hand.quant.embedding.bits = bits
    shortcut = resolve_config(make_cfg([f"quant={quant}", "method=sdq_noise", f"bits={bits}"]))
    assert quant_dict(shortcut) == quant_dict(by_hand)


@pytest.mark.parametrize(("overrides", "match"), [
    (["quant=fp32", "bits=2"], "bits=2 with quant=fp32: the preset quantizes no weights"),
    (["quant.weight.bits=3", "bits=4"], "quant.weight.bits is fixed at 3"),
])
def test_bits_refused_where_the_preset_cannot_take_it(overrides: list[str], match: str) -> None:
    with pytest.raises(SdqConfigError, match=match):
        resolve_config(make_cfg(overrides))
    resolve_config(make_cfg([*overrides, "method=fp"]))  # no quantization: nothing to refuse


@pytest.mark.parametrize("bits", [0, 9, 33, -1])
def test_invalid_bits_fail_before_model_load(bits: int) -> None:
    with pytest.raises(SdqConfigError, match="bit"):
        resolve_config(make_cfg([f"bits={bits}"]))


def _train(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], check=False, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_bits_shows_in_cfg_job() -> None:
    """``--cfg job`` shows the values the run uses: 4-bit weights and embeddings, 8-bit activations."""
    out = _train("bits=4", "--cfg", "job")
    assert out.returncode == 0, out.stderr[-2000:]
    job = yaml.safe_load(out.stdout)
    q = job["quant"]
    assert job["bits"] == 4 and (q["weight"]["bits"], q["embedding"]["bits"], q["act"]["bits"]) == (4, 4, 8)
    default = yaml.safe_load(_train("--cfg", "job").stdout)["quant"]
    assert (default["weight"]["bits"], default["embedding"]["bits"]) == (8, 8)


def test_user_task_yaml_loads_through_hydra_searchpath(tmp_path: Path) -> None:
    """A task config in the user's own dir (outside conf/) is a choice of the task group."""
    (tmp_path / "task").mkdir()
    mine = (CONF / "task" / "xnli.yaml").read_text().replace("epochs: 5", "epochs: 7")
    assert mine != (CONF / "task" / "xnli.yaml").read_text()
    (tmp_path / "task" / "my_task.yaml").write_text(mine)
    for how in ([f"hydra.searchpath=[file://{tmp_path}]"], ["--config-dir", str(tmp_path)]):
        proc = _train(*how, "task=my_task", "--cfg", "job")
        assert proc.returncode == 0, proc.stderr[-2000:]
        task = yaml.safe_load(proc.stdout)["task"]
        assert task["name"] == "xnli" and task["epochs"] == 7
    proc = _train(f"hydra.searchpath=[file://{tmp_path}]", "task=their_task", "--cfg", "job")
    assert proc.returncode == 2 and proc.stderr.startswith("error: task=their_task is not a config"), proc.stderr
    assert "my_task" in proc.stderr and "xnli" in proc.stderr


def test_task_data_defaults_and_overrides() -> None:
    """A task may default data keys (sib200: English model selection); data.* overrides win."""
    from sdq.lit.stage import build_datamodule
    from sdq.models import load_tokenizer, resolve_backbone

    tok = load_tokenizer(resolve_backbone("tiny"))
    dm = build_datamodule(resolve_config(make_cfg(["model=tiny", "task=sib200"])), tok)
    assert dm.val_languages == ["eng_Latn"] and len(dm.test_languages) == 50
    assert dm.sizes()["train/eng_Latn"] == 701
    cfg = resolve_config(make_cfg(["model=tiny", "task=sib200", "data.limit_train=8", "data.val_languages=null"]))
    dm = build_datamodule(cfg, tok)  # null: every language with a dev split (the subset ships English dev only)
    assert dm.val_languages == ["eng_Latn"] and dm.sizes()["train/eng_Latn"] == 8


def test_wandb_teacher_and_student_stages_get_their_own_runs(tmp_path: Path, fixture_root: Path, monkeypatch):
    """Two-stage job (teacher fine-tuned first): each stage closes its W&B run, so the student's table
    lands in its own offline run, and a second job in the same process (Hydra sweep) gets a new one."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    real = ["trainer.fast_dev_run=false", "+trainer.max_steps=1", "+trainer.limit_val_batches=1", "logger=wandb"]
    for job in ("a", "b"):
        smoke(tmp_path / job, fixture_root, ["task=xnli", "method=ptq", *real])
        run_dir = tmp_path / job / "run"
        student = list(run_dir.glob("wandb/offline-run-*"))
        teacher = list((run_dir / "teacher").glob("wandb/offline-run-*"))
        assert len(student) == 1 and len(teacher) == 1, sorted(str(p) for p in run_dir.rglob("offline-run-*"))
        assert list(student[0].glob("files/media/table/per_language_*.table.json"))


def test_default_run_dir_resolves_from_any_cwd(tmp_path):
    """``python train.py`` with no hydra.run.dir: the default run dir (it uses sdq's own resolver) is
    created under the cwd; bits=0 then stops with one error line before any model is loaded."""
    proc = _train("bits=0", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:")).startswith("error: bits=0")
    (run_dir,) = list((tmp_path / "outputs" / "sib200" / "me5_small").glob("sdq-w8a8-b0/*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_teacher_val_languages_select_the_teacher_and_keep_its_cache_key() -> None:
    from sdq.lit.settings import RunSettings, teacher_key

    base = ["experiment=xnli_me5"]
    en = teacher_key(make_cfg([*base, "data.val_languages=[en]"]))
    # the teacher selected on English dev, the student on every language: the same cached teacher
    split = make_cfg([*base, "teacher.val_languages=[en]", "data.val_languages=null"])
    assert teacher_key(split) == en
    assert RunSettings.from_config(split).teacher.val_languages == ["en"]
    assert RunSettings.from_config(split).data.val_languages is None  # the student stage: every language
    assert teacher_key(make_cfg(base)) == teacher_key(make_cfg([*base, "teacher.val_languages=null"])) != en
    assert teacher_key(make_cfg([*base, "teacher.val_languages=[de]", "data.val_languages=[en]"])) != en


def test_teacher_selected_on_its_own_dev_languages(tmp_path: Path, fixture_root: Path) -> None:
    """teacher.val_languages=[en]: stage 1 validates on English only, the student stage on every language."""
    results = smoke(tmp_path, fixture_root, ["task=xnli", "method=qat", "teacher.val_languages=[en]"])
    teacher = json.loads((tmp_path / "run" / "teacher" / "results.json").read_text())
    assert set(teacher["xnli"]["dev"]) - {"avg"} == {"en"}
    assert set(results["xnli"]["dev"]) - {"avg"} == set(results["xnli"]["test"]) - {"avg"}
    assert len(set(results["xnli"]["dev"]) - {"avg"}) > 1
