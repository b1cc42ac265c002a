"""The run config resolved once into plain typed settings: what ``lit/``, the teacher stage and the
pipeline read (no ``DictConfig`` travels further than :mod:`sdq.pipeline`).

>>> s = RunSettings.from_config(cfg)              # cfg: composed and checked by sdq.config.resolve_config
>>> s.data.batch_size, s.student.lr, s.lightning.trainer["max_epochs"], s.teacher.key
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from omegaconf import DictConfig

from sdq.config import plain, stable_hash
from sdq.data.task_config import task_from_config
from sdq.data.tasks import TaskSpec
from sdq.data.unlabeled import UnlabeledSpec


@dataclass(frozen=True)
class DataSettings:
    """What the datamodule is built from (``data.*``, with the task's defaults where ``data.*`` is null)."""

    task: str
    root: str | None
    max_length: int
    batch_size: int
    eval_batch_size: int
    languages: list[str] | None
    val_languages: list[str] | None
    limit_train: int | None
    limit_eval: int | None
    num_workers: int
    seed: int
    spec: TaskSpec | None = None  # the task as its config declares it (None: the registered ``task``)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> DataSettings:
        """Also reads the config stored in a checkpoint (``sdq.lit.restore.checkpoint_config``)."""
        d, task = cfg.data, cfg.task
        val = d.get("val_languages") or task.get("val_languages")
        spec = task_from_config(task)
        if spec.source is not None:  # own data: refuse a run without it before any model loads
            spec.source.check()
        return cls(
            task=str(task.name), root=d.root, max_length=d.max_length, batch_size=d.batch_size,
            eval_batch_size=d.eval_batch_size,
            languages=list(d.languages) if d.languages is not None else None,
            val_languages=list(val) if val else None,
            limit_train=d.limit_train if d.limit_train is not None else task.get("limit_train"),
            limit_eval=d.limit_eval if d.limit_eval is not None else task.get("limit_eval"),
            num_workers=d.num_workers, seed=cfg.seed, spec=spec,
        )


@dataclass(frozen=True)
class Recipe:
    """The optimization recipe of one stage (AdamW + linear warmup/decay, see :mod:`sdq.lit.optim`)."""

    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    freeze_embeddings: bool = False


@dataclass(frozen=True)
class TeacherSettings:
    """Stage 1: a given FP checkpoint, the cached one (``key``), or fine-tuned for ``epochs`` with ``recipe``."""

    ckpt: str | None
    reuse: bool
    cache_dir: str
    bf16: bool
    key: str
    epochs: int
    recipe: Recipe
    test: bool = False  # stage 1 also tests every language (the student stage reports the teacher there anyway)
    val_languages: list[str] | None = None  # dev languages stage 1 selects on (None: the run's data.val_languages)


@dataclass(frozen=True)
class LightningSettings:
    """``conf/trainer``, ``conf/callbacks``, ``conf/logger`` resolved (``_target_`` dicts) and the resume choice.

    ``trainer["max_epochs"]`` is the student stage's; :meth:`with_epochs` gives a stage its own.
    """

    trainer: dict
    callbacks: dict[str, dict] = field(default_factory=dict)
    logger: dict | None = None
    resume: bool = False            # ckpt_path=last / resume=true: every stage continues from its last.ckpt
    ckpt_path: str | None = None    # the student stage's: "last", a file, or None

    def with_epochs(self, max_epochs: int) -> LightningSettings:
        return replace(self, trainer={**self.trainer, "max_epochs": int(max_epochs)})


@dataclass(frozen=True)
class RunSettings:
    """Everything below the pipeline reads, resolved once from the composed config."""

    seed: int
    data: DataSettings
    teacher: TeacherSettings
    student: Recipe
    lightning: LightningSettings
    layer_errors: bool
    unlabeled: UnlabeledSpec = field(default_factory=UnlabeledSpec)  # distillation inputs without labels

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunSettings:
        task, method = cfg.task, cfg.method
        common = {"weight_decay": float(task.weight_decay), "warmup_ratio": float(task.warmup_ratio),
                  "freeze_embeddings": bool(task.freeze_embeddings)}
        student_lr = method.lr if method.get("lr") is not None else task.lr
        return cls(
            seed=int(cfg.seed),
            data=DataSettings.from_config(cfg),
            teacher=TeacherSettings(
                ckpt=str(cfg.teacher.ckpt) if cfg.teacher.ckpt else None, reuse=bool(cfg.teacher.reuse),
                cache_dir=str(cfg.teacher.cache_dir), bf16=bool(cfg.teacher.bf16), key=teacher_key(cfg),
                epochs=int(task.epochs), recipe=Recipe(lr=float(task.lr), **common),
                test=bool(cfg.teacher.get("test", False)),
                val_languages=_teacher_val_languages(cfg),
            ),
            student=Recipe(lr=float(student_lr), **common),
            lightning=lightning_settings(cfg),
            layer_errors=bool(cfg.diagnostics.layer_errors),
            unlabeled=UnlabeledSpec.from_config(plain(cfg.get("unlabeled"))),
        )


def student_epochs(cfg: DictConfig) -> int | None:
    """``trainer.max_epochs`` (which defaults to ``method.epochs``, itself defaulting to ``task.epochs``);
    ``task.epochs`` where both are null and no ``trainer.max_steps`` bounds the run."""
    epochs = cfg.trainer.get("max_epochs")
    if epochs is None and cfg.trainer.get("max_steps") in (None, -1):
        epochs = cfg.task.epochs
    return None if epochs is None else int(epochs)


def lightning_settings(cfg: DictConfig) -> LightningSettings:
    """The Lightning part of ``cfg``: trainer / callbacks / logger as plain ``_target_`` dicts."""
    trainer = plain(cfg.trainer)
    trainer["max_epochs"] = student_epochs(cfg)
    callbacks = {name: node for name, node in (plain(cfg.get("callbacks")) or {}).items()
                 if isinstance(node, dict) and node.get("_target_")}
    logger = plain(cfg.get("logger"))
    ckpt_path = cfg.get("ckpt_path")
    return LightningSettings(
        trainer=trainer, callbacks=callbacks, logger=logger if logger and logger.get("_target_") else None,
        resume=bool(cfg.get("resume")) or str(ckpt_path) == "last",
        ckpt_path=str(ckpt_path) if ckpt_path is not None else None,
    )


def teacher_key(cfg: DictConfig) -> str:
    """Cache key of a stage-1 teacher (backbone, task section, seed, data root and the data keys that
    change what it is trained and selected on). Unchanged formula: cached teachers stay valid."""
    root = cfg.data.root
    data = {k: cfg.data.get(k) for k in ("max_length", "batch_size", "limit_train", "limit_eval", "languages")}
    val = _teacher_val_languages(cfg) or cfg.data.get("val_languages")
    if val:  # model selection languages (absent = all: older keys stay valid)
        data["val_languages"] = list(val)  # (task.val_languages is part of "task")
    return stable_hash({
        "model": cfg.model.name_or_path, "task": dict(cfg.task), "seed": cfg.seed,
        "root": os.path.abspath(root) if root else None, "data": data,
    })


def _teacher_val_languages(cfg: DictConfig) -> list[str] | None:
    val = (cfg.get("teacher") or {}).get("val_languages")
    return [str(lang) for lang in val] if val else None
