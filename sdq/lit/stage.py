"""Building blocks of a run shared by the teacher and student stages, on resolved settings.

>>> dm = datamodule(settings.data, tokenizer)
>>> module = make_module(student, teacher, loss, dm, settings.student, fingerprint=fp, run_config=cfg_dict)
>>> trainer = fit_and_test(module, dm, settings.lightning, run_dir, train=True, tags={})
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from sdq.data.unlabeled import UnlabeledSpec, read_unlabeled
from sdq.errors import SdqConfigError
from sdq.lit.builders import build_trainer
from sdq.lit.data import ResumableDataModule
from sdq.lit.module import SDQModule, TaskInfo
from sdq.lit.restore import read_checkpoint
from sdq.lit.resume import resolve_ckpt_path
from sdq.lit.settings import DataSettings, LightningSettings, Recipe

log = logging.getLogger(__name__)


def datamodule(data: DataSettings, tokenizer) -> ResumableDataModule:
    """The task's datamodule, set up; resumable, DDP-sharded. Fail fast: every split of every language
    (train, dev, test) is read and checked here, before any training step."""
    root = data.root
    dm = ResumableDataModule(
        task=data.spec or data.task, root=root, tokenizer=tokenizer, max_length=data.max_length,
        batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, languages=data.languages,
        val_languages=data.val_languages, num_workers=data.num_workers, seed=data.seed,
        limit_train=data.limit_train, limit_eval=data.limit_eval,
    )
    dm.setup()  # train, dev and test: a malformed test file stops the run before stage 1
    return dm


def unlabeled_pool(spec: UnlabeledSpec, dm: ResumableDataModule, distills: bool,
                   calibrates: bool = False) -> list[dict] | None:
    """The encoded unlabeled examples of ``spec`` (None when off), read and checked before any training;
    SdqConfigError when the run neither distils on them nor calibrates on them."""
    if not spec.enabled:
        return None
    if not (distills or calibrates):
        raise SdqConfigError("unlabeled data needs a teacher to distil from and a distillation loss (use "
                             "method=qat_kd|sdq|sdq_paper|sdq_noise) or a quantized method that calibrates on "
                             "it (method.calibrate_unlabeled=N); or unlabeled=none")
    rows = read_unlabeled(spec, seed=dm.seed)
    pool = [ex for lang in rows for ex in dm.encode_unlabeled(rows[lang])]
    use = f"{per_step(spec, dm.batch_size)} per step beside {dm.batch_size} labelled" if distills else "calibration"
    log.info("unlabeled: %d examples (%s), %s", len(pool), ", ".join(f"{k} {len(v)}" for k, v in rows.items()), use)
    return pool


def calibration_sample(pool: list[dict], n: int, collate, batch_size: int, seed: int) -> list[dict]:
    """``n`` examples of the unlabeled pool (a seeded draw over all its languages) as collated batches.

    >>> batches = calibration_sample(pool, 256, dm.collate, 32, seed=42)     # 8 batches of 32
    """
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=gen)[:n].tolist()
    return [collate([pool[i] for i in pick[k:k + batch_size]]) for k in range(0, len(pick), batch_size)]


def per_step(spec: UnlabeledSpec, batch_size: int) -> int:
    """Unlabeled examples in each training batch: ``ratio`` x the labelled batch size (at least 1)."""
    return max(1, round(spec.ratio * batch_size))


def build_datamodule(cfg: DictConfig, tokenizer) -> ResumableDataModule:
    """:func:`datamodule` for a run config (e.g. the one stored in a checkpoint)."""
    return datamodule(DataSettings.from_config(cfg), tokenizer)


def make_module(
    student,
    teacher,
    loss,
    dm: ResumableDataModule,
    recipe: Recipe,
    *,
    teacher_bf16: bool = True,
    layer_errors: bool = True,
    fingerprint: dict | None = None,
    run_config: dict | None = None,
    teacher_ckpt: str | Path | None = None,
) -> SDQModule:
    """The LightningModule for one stage (teacher fine-tuning or student training)."""
    spec = dm.spec
    diag = None
    if teacher is not None and layer_errors:
        diag = next(iter(dm.val_dataloader()[0]))  # a fixed dev batch (first language, first batch)
    return SDQModule(
        student, teacher, loss,
        TaskInfo(spec.name, spec.kind, spec.metric, tuple(spec.labels)),
        val_languages=dm.val_languages, test_languages=dm.test_languages,
        lr=recipe.lr, weight_decay=recipe.weight_decay, warmup_ratio=recipe.warmup_ratio,
        freeze_embeddings=recipe.freeze_embeddings, teacher_bf16=teacher_bf16,
        diag_batch=diag, fingerprint=fingerprint, run_config=run_config,
        teacher_ckpt=str(teacher_ckpt) if teacher_ckpt else None,
    )


def monitor_key(spec, fidelity: bool = False) -> str:
    """What ``best.ckpt`` selects on: the average dev metric, or for a distilling student (``fidelity``) the
    average dev agreement with its teacher, the quantity the distillation optimises.

    >>> monitor_key(spec, fidelity=True)   # 'val/xnli/avg/agree'
    """
    return f"val/{spec.name}/avg/{'agree' if fidelity else spec.metric}"


def fit_and_test(
    module: SDQModule,
    dm: ResumableDataModule,
    lightning: LightningSettings,
    stage_dir: Path,
    *,
    train: bool,
    tags: dict,
    ckpt_path: str | None = None,
    teacher_stage: bool = False,
    test: bool = True,
    fidelity: bool = False,
):
    """Fit (best on :func:`monitor_key`: the average dev metric, or with ``fidelity`` the dev agreement with
    the teacher), reload best, test every language (unless ``test=False``: dev only). Returns the trainer.

    ``ckpt_path``: ``last`` / a file to resume from (see :func:`sdq.lit.resume.resolve_ckpt_path`);
    with ``None``, ``lightning.resume`` (``ckpt_path=last`` / ``resume=true``) still resumes this stage.
    """
    ckpt_path = resolve_ckpt_path(stage_dir, ckpt_path, lightning.resume) if train else None
    if ckpt_path:  # unreadable, or from another model/quant config: one clear error before any output
        module.check_checkpoint(read_checkpoint(ckpt_path), f"checkpoint {ckpt_path}")
    trainer = build_trainer(lightning, stage_dir, monitor_key(dm.spec, fidelity), train=train, teacher_stage=teacher_stage,
                            tags=tags, run_config=module.run_config)
    if train:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=False)
            module.on_load_checkpoint(state)
            module.load_state_dict(state["state_dict"])
            log.info("loaded best checkpoint %s", best)
    trainer.validate(module, datamodule=dm, verbose=False)  # dev results of the selected (best) model
    if test:
        trainer.test(module, datamodule=dm, verbose=False)
    return trainer
