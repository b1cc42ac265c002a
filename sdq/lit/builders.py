"""Build a stage's Lightning Trainer from the resolved config: ``conf/trainer`` (``_target_``), the
``conf/callbacks`` group, the ``conf/logger`` group, plus what correctness needs, added here:
:class:`~sdq.lit.resume.ExactResume`, atomic checkpoint writes and the sdq data loaders' own DDP sharding.

>>> trainer = build_trainer(settings.lightning, run_dir, monitor="val/xnli/avg/acc", tags=tags, run_config=cfg)
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary

from sdq.lit.callbacks import build_callbacks
from sdq.lit.checkpoint_io import AtomicCheckpointIO
from sdq.lit.logger import build_logger, finish_logger
from sdq.lit.quiet import quiet_lightning
from sdq.lit.resume import ExactResume
from sdq.lit.settings import LightningSettings

__all__ = ["build_logger", "build_trainer", "finish_logger"]


def build_trainer(
    lightning: LightningSettings,
    stage_dir: Path,
    monitor: str,
    *,
    train: bool = True,
    teacher_stage: bool = False,
    tags: dict[str, str] | None = None,
    run_config: dict | None = None,
) -> pl.Trainer:
    """Trainer for one stage writing into ``stage_dir`` (``lightning.trainer["max_epochs"]`` epochs).

    ``monitor``: the average dev metric that ``model_checkpoint`` (``best.ckpt``) selects on.
    """
    quiet_lightning()
    tcfg = dict(lightning.trainer)
    logger = build_logger(lightning.logger, stage_dir, tags or {}, run_config)
    callbacks = build_callbacks(
        lightning.callbacks, stage_dir, monitor, train=train, teacher_stage=teacher_stage,
        progress_bar=bool(tcfg.get("enable_progress_bar", True)),
        model_summary=bool(tcfg.get("enable_model_summary", True)), has_logger=bool(logger),
    )
    tcfg.update(
        default_root_dir=str(stage_dir),
        logger=logger,
        callbacks=[ExactResume(), *callbacks],
        enable_checkpointing=train and any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        # a configured summary callback replaces Lightning's default (without its "already configured" notice)
        enable_model_summary=tcfg.get("enable_model_summary", True)
        and not any(isinstance(cb, ModelSummary) for cb in callbacks),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # sdq.lit.data loaders shard for DDP themselves (resumable, unpadded eval)
    )
    return hydra.utils.instantiate(tcfg, _convert_="object")
