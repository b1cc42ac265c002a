"""Building blocks of a run shared by the teacher and student stages.

>>> dm = build_datamodule(cfg, tokenizer)
>>> module = make_module(cfg, student, teacher, loss, dm, lr=2e-5, fp=fingerprint(cfg))
>>> fit_and_test(cfg, module, dm, run_dir, epochs=2, train=True, tags={})
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from sdq.config import plain_config
from sdq.lit.builders import build_logger, build_trainer
from sdq.lit.data import ResumableDataModule
from sdq.lit.module import SDQModule, TaskInfo
from sdq.lit.restore import read_checkpoint
from sdq.lit.resume import resolve_ckpt_path

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, tokenizer) -> ResumableDataModule:
    """The task's datamodule (English train, every language dev/test), set up; resumable, DDP-sharded."""
    d = cfg.data
    root = d.root
    if root is None and cfg.task.name == "demo":
        from sdq.data.demo import ensure_demo

        root = str(ensure_demo())
    dm = ResumableDataModule(
        task=cfg.task.name, root=root, tokenizer=tokenizer, max_length=d.max_length,
        batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        languages=list(d.languages) if d.languages is not None else None,
        val_languages=list(val) if (val := d.get("val_languages") or cfg.task.get("val_languages")) else None,
        num_workers=d.num_workers, seed=cfg.seed,
        limit_train=d.limit_train if d.limit_train is not None else cfg.task.get("limit_train"),
        limit_eval=d.limit_eval if d.limit_eval is not None else cfg.task.get("limit_eval"),
    )
    dm.setup("fit")
    return dm


def make_module(cfg, student, teacher, loss, dm, lr: float, fp: dict, teacher_ckpt=None) -> SDQModule:
    """The LightningModule for one stage (teacher fine-tuning or student training)."""
    spec = dm.spec
    diag = None
    if teacher is not None and cfg.diagnostics.layer_errors:
        diag = next(iter(dm.val_dataloader()[0]))  # a fixed dev batch (first language, first batch)
    return SDQModule(
        student, teacher, loss,
        TaskInfo(spec.name, spec.kind, spec.metric, tuple(spec.labels)),
        val_languages=dm.val_languages, test_languages=dm.test_languages,
        lr=lr, weight_decay=cfg.task.weight_decay, warmup_ratio=cfg.task.warmup_ratio,
        freeze_embeddings=cfg.task.freeze_embeddings, teacher_bf16=cfg.teacher.bf16,
        diag_batch=diag, fingerprint=fp, run_config=plain_config(cfg),
        teacher_ckpt=str(teacher_ckpt) if teacher_ckpt else None,
    )


def monitor_key(spec) -> str:
    return f"val/{spec.name}/avg/{spec.metric}"


def fit_and_test(cfg, module, dm, stage_dir: Path, epochs: int, train: bool, tags: dict, ckpt_path=None):
    """Fit (best on average dev metric), reload best, test every language. Returns the trainer.

    ``ckpt_path``: ``last`` / a file to resume from (see :func:`sdq.lit.resume.resolve_ckpt_path`);
    with ``None``, ``ckpt_path=last`` or ``resume=true`` in ``cfg`` still resumes this stage.
    """
    ckpt_path = resolve_ckpt_path(cfg, stage_dir, ckpt_path) if train else None
    if ckpt_path:  # unreadable, or from another model/quant config: one clear error before any output
        module.check_checkpoint(read_checkpoint(ckpt_path), f"checkpoint {ckpt_path}")
    logger = build_logger(cfg, stage_dir, tags)
    trainer = build_trainer(cfg, stage_dir, epochs, monitor_key(dm.spec), logger=logger, enable_checkpointing=train)
    if train:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=False)
            module.on_load_checkpoint(state)
            module.load_state_dict(state["state_dict"])
            log.info("loaded best checkpoint %s", best)
    trainer.validate(module, datamodule=dm, verbose=False)  # dev results of the selected (best) model
    trainer.test(module, datamodule=dm, verbose=False)
    return trainer
