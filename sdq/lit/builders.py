"""Build the Lightning Trainer, logger and callbacks from the Hydra config.

>>> trainer = build_trainer(cfg, run_dir / "student", max_epochs=2, monitor="val/xnli/avg/acc")
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from sdq.config import plain_config
from sdq.lit.checkpoint_io import AtomicCheckpointIO
from sdq.lit.resume import ExactResume

log = logging.getLogger(__name__)


def wandb_reachable(host: str = "api.wandb.ai", port: int = 443, timeout: float = 1.5) -> bool:
    """True when the W&B server answers a TCP connect within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def build_logger(cfg: DictConfig, save_dir: Path, tags: dict[str, str]):
    """CSV / W&B / no logger. W&B falls back to offline mode with a warning when unreachable."""
    lcfg = cfg.get("logger")
    if not lcfg or not lcfg.get("_target_"):
        return False
    lcfg = {k: v for k, v in lcfg.items() if k != "save_dir"}  # the stage dir, not ${hydra:...}
    lcfg = OmegaConf.to_container(OmegaConf.create(lcfg), resolve=True)
    lcfg["save_dir"] = str(save_dir)
    if "Wandb" in lcfg["_target_"]:
        if not lcfg.get("offline") and not wandb_reachable():
            log.warning("W&B is unreachable: logging offline to %s/wandb (sync later with `wandb sync`)", save_dir)
            lcfg["offline"] = True
        lcfg.setdefault("tags", [f"{k}={v}" for k, v in tags.items()])
        lcfg.setdefault("group", f"{tags.get('task')}-{tags.get('model')}")
        lcfg.setdefault("name", "-".join(str(v) for v in tags.values()))
    logger = hydra.utils.instantiate(lcfg)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams({**tags, "config": plain_config(cfg)})
    return logger


def finish_logger(trainer: pl.Trainer) -> None:
    """Close the stage's W&B run: the next stage (or the next job of an in-process Hydra sweep) must get
    its own run, not be appended to this one (``wandb.init`` reuses a run that is still open)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps (0 = never mid-epoch) and after every
    validation, whether or not the dev metric improved: what ``ckpt_path=last`` resumes from."""

    def __init__(self, dirpath: Path, every_n_train_steps: int = 0) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps or None, every_n_epochs=0)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def build_trainer(
    cfg: DictConfig,
    stage_dir: Path,
    max_epochs: int,
    monitor: str,
    logger=False,
    enable_checkpointing: bool = True,
) -> pl.Trainer:
    """Trainer from ``conf/trainer`` + best/last checkpoints selected on the average dev metric.

    ``last.ckpt`` (:class:`LastCheckpoint`) is written after every validation and every
    ``checkpoint.every_n_train_steps`` steps (0 = at validation only) for mid-epoch resume; files are
    overwritten in place (no ``-v1`` copies).
    """
    callbacks: list = [ExactResume()]
    if enable_checkpointing:
        callbacks.append(
            ModelCheckpoint(
                dirpath=stage_dir / "checkpoints",
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
        every = int((cfg.get("checkpoint") or {}).get("every_n_train_steps") or 0)
        callbacks.append(LastCheckpoint(stage_dir / "checkpoints", every))  # after "best": sees its update
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.update(
        max_epochs=max_epochs,
        default_root_dir=str(stage_dir),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=enable_checkpointing,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # sdq.lit.data loaders shard for DDP themselves (resumable, unpadded eval)
    )
    return hydra.utils.instantiate(tcfg, _convert_="object")
