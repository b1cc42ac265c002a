"""Lightning as configured: ``trainer.max_epochs`` honoured, a callback added from the command line
(``callbacks=[default,early_stopping]``), one-call checkpoint reload (``sdq.load_student``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sdq.data.synthetic import write_fixture
from sdq.teacher import save_weights

CONF = Path(__file__).resolve().parents[1] / "conf"
STEPS_PER_EPOCH = 3  # 12 training examples, batch 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from sdq.models import build_model, resolve_backbone

    tmp = tmp_path_factory.mktemp("callbacks")
    root = write_fixture(tmp / "xglue", tasks=["xnli"], n=12)
    torch.manual_seed(0)
    return root, save_weights(build_model(resolve_backbone("tiny"), "seq_cls", 3), tmp / "teacher.safetensors")


def compose_cfg(root: Path, teacher: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=tiny", "task=xnli", "method=sdq", f"data.root={root}", f"teacher.ckpt={teacher}",
            "logger=none", "data.batch_size=4", "data.eval_batch_size=8", "method.lr=1e-3",
            "checkpoint.every_n_train_steps=0", "trainer.enable_progress_bar=false", *overrides,
        ])


def train(run_dir: Path, cfg) -> dict:
    from sdq.pipeline import run

    run(cfg, run_dir=run_dir)
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_epochs_defaults_feed_trainer_max_epochs(setup) -> None:
    from sdq.config import resolve_config
    from sdq.lit.settings import RunSettings

    root, teacher = setup
    s = RunSettings.from_config(resolve_config(compose_cfg(root, teacher)))
    assert s.lightning.trainer["max_epochs"] == 1 and s.teacher.epochs == 5  # method=sdq: 1; task=xnli: 5
    s = RunSettings.from_config(resolve_config(compose_cfg(root, teacher, "method=fp")))
    assert s.lightning.trainer["max_epochs"] == 5  # fp: method.epochs defaults to task.epochs
    s = RunSettings.from_config(resolve_config(compose_cfg(root, teacher, "trainer.max_epochs=3", "method.epochs=7")))
    assert s.lightning.trainer["max_epochs"] == 3 and s.teacher.epochs == 5  # stage 1 keeps task.epochs
    s = RunSettings.from_config(resolve_config(compose_cfg(root, teacher, "method.epochs=null")))
    assert s.lightning.trainer["max_epochs"] == 5  # null still means task.epochs, never Lightning's 1000


def test_trainer_max_epochs_is_honoured_and_checkpoint_reloads_in_one_call(tmp_path: Path, setup) -> None:
    import sdq
    from sdq.errors import SdqError
    from sdq.lit.module import SDQModule

    root, teacher = setup
    ckpt = train(tmp_path, compose_cfg(root, teacher, "method.epochs=3", "trainer.max_epochs=1"))
    assert ckpt["global_step"] == STEPS_PER_EPOCH and ckpt["epoch"] == 0

    best = tmp_path / "checkpoints" / "best.ckpt"
    student = sdq.load_student(best)
    saved = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    own = student.state_dict()
    assert any("weight_quantizer" in k for k in own) and not student.training
    assert [k for k, v in own.items() if not torch.equal(v, saved[f"student.{k}"])] == []
    with pytest.raises(SdqError, match=r"sdq\.load_student\(path\)"):
        SDQModule.load_from_checkpoint(best)


def test_callback_added_from_the_command_line(tmp_path: Path, setup) -> None:
    root, teacher = setup
    # min_delta beyond any accuracy: epoch 0 sets the best, epoch 1 does not improve it -> stop (patience 1)
    cfg = compose_cfg(root, teacher, "trainer.max_epochs=4", "callbacks=[default,early_stopping]",
                      "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1000")
    assert cfg.callbacks.early_stopping.monitor is None  # filled per stage: sdq distils -> dev agreement
    ckpt = train(tmp_path, cfg)
    assert ckpt["global_step"] == 2 * STEPS_PER_EPOCH  # stopped after 2 of 4 epochs
    stopper = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping"))
    assert stopper["patience"] == 1 and float(stopper["best_score"]) >= 0, stopper
    assert any(k.startswith("EarlyStopping{'monitor': 'val/xnli/avg/agree'") for k in ckpt["callbacks"])
    assert any(k.startswith("ModelCheckpoint{'monitor': 'val/xnli/avg/agree'") for k in ckpt["callbacks"])


def test_callbacks_none_and_stage_filters(tmp_path: Path) -> None:
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar

    from sdq.lit.callbacks import LastCheckpoint, build_callbacks

    nodes = {
        "best": {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "dirpath": None, "monitor": None},
        "last": {"_target_": "sdq.lit.callbacks.LastCheckpoint", "dirpath": None, "every_n_train_steps": 5},
        "lr": {"_target_": "pytorch_lightning.callbacks.LearningRateMonitor"},
        "bar": {"_target_": "sdq.lit.callbacks.RichProgressBar"},
        "stop": {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": None, "mode": "max"},
    }
    every = build_callbacks(nodes, tmp_path, "val/xnli/avg/acc")
    assert [type(cb).__name__ for cb in every] == [
        "ModelCheckpoint", "LastCheckpoint", "LearningRateMonitor", "RichProgressBar", "EarlyStopping"]
    assert every[0].dirpath == str(tmp_path / "checkpoints") and every[0].monitor == "val/xnli/avg/acc"
    assert isinstance(every[1], LastCheckpoint) and every[1]._every_n_train_steps == 5
    teacher = build_callbacks(nodes, tmp_path, "m", teacher_stage=True, progress_bar=False, has_logger=False)
    assert not any(isinstance(cb, EarlyStopping | ProgressBar | LearningRateMonitor) for cb in teacher)
    ptq = build_callbacks(nodes, tmp_path, "m", train=False)
    assert not any(isinstance(cb, ModelCheckpoint | EarlyStopping) for cb in ptq)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert not compose(config_name="config", overrides=["callbacks=none"]).get("callbacks")


def test_progress_bar_has_no_version_number(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichProgressBar as LightningBar
    from pytorch_lightning.loggers import CSVLogger

    from sdq.lit.callbacks import RichProgressBar, TQDMProgressBar

    trainer = pl.Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    assert "v_num" in LightningBar().get_metrics(trainer, None)
    assert "v_num" not in RichProgressBar().get_metrics(trainer, None)
    assert "v_num" not in TQDMProgressBar().get_metrics(trainer, None)
