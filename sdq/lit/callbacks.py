"""Callbacks of a stage, built from ``conf/callbacks`` (one ``_target_`` node per callback), and the two
sdq callbacks that group names: :class:`LastCheckpoint` and progress bars without ``v_num``.

``dirpath: null`` / ``monitor: null`` in a callback node mean the stage's ``checkpoints/`` dir and the
stage's monitor, filled in per stage: the task's average dev metric (``val/<task>/avg/<metric>``), or for a
distilling student its average dev agreement with the teacher (``val/<task>/avg/agree``).

>>> callbacks = build_callbacks(settings.callbacks, run_dir / "teacher", "val/xnli/avg/acc", train=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
)
from pytorch_lightning.callbacks import RichProgressBar as _RichProgressBar
from pytorch_lightning.callbacks import TQDMProgressBar as _TQDMProgressBar


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps (0 = never mid-epoch) and after every
    validation, whether or not the dev metric improved: what ``ckpt_path=last`` resumes from. Files are
    overwritten in place (no ``-v1`` copies).

    >>> LastCheckpoint(dirpath="run/checkpoints", every_n_train_steps=50)
    """

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int = 0) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps or None, every_n_epochs=0)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _without_version(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("v_num", None)  # the logger's version: one per stage dir here, no information
    return metrics


class RichProgressBar(_RichProgressBar):
    """Lightning's rich progress bar without ``v_num``."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))


class TQDMProgressBar(_TQDMProgressBar):
    """Lightning's tqdm progress bar without ``v_num``."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))


def build_callbacks(
    nodes: dict[str, dict],
    stage_dir: Path,
    monitor: str,
    *,
    train: bool = True,
    progress_bar: bool = True,
    model_summary: bool = True,
    has_logger: bool = True,
    teacher_stage: bool = False,
) -> list[Callback]:
    """Instantiate the configured callbacks a stage can use, in config order.

    Left out: checkpoint callbacks when the stage does not train (PTQ), progress bars / model summaries
    the trainer disables, the LR monitor without a logger, and early stopping in the teacher stage (a
    cached teacher is keyed on its task recipe, not on callbacks).
    """
    out: list[Callback] = []
    for node in nodes.values():
        node = dict(node)
        if node.get("dirpath", "") is None:
            node["dirpath"] = str(Path(stage_dir) / "checkpoints")
        if node.get("monitor", "") is None:
            node["monitor"] = monitor
        cb = hydra.utils.instantiate(node, _convert_="object")
        skip = (
            (isinstance(cb, ModelCheckpoint) and not train)
            or (isinstance(cb, ProgressBar) and not progress_bar)
            or (isinstance(cb, ModelSummary) and not model_summary)
            or (isinstance(cb, LearningRateMonitor) and not has_logger)
            or (isinstance(cb, EarlyStopping) and (teacher_stage or not train))
        )
        if not skip:
            out.append(cb)
    return out
