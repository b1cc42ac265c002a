"""The full-precision teacher: given (`teacher.ckpt=`), cached, or fine-tuned first (stage 1).

Stage-1 teachers are cached by a hash of everything that defines them (backbone, task, data,
seed, recipe), so a sweep over methods and bit-widths fine-tunes one teacher and every job
distils from the very same weights.

>>> path = obtain_teacher(settings.teacher, lambda: finetune_teacher(backbone, dm, run_dir / "teacher", ...))
>>> load_weights(model, path)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from safetensors.torch import load_file, save_file
from torch import nn

from sdq.distill import DistillLoss
from sdq.errors import SdqError
from sdq.lit.logger import finish_logger
from sdq.lit.restore import state_mismatch
from sdq.lit.settings import LightningSettings, TeacherSettings
from sdq.lit.stage import fit_and_test, make_module
from sdq.models import build_model
from sdq.results import print_table, write_results

log = logging.getLogger(__name__)


def _state_from_lightning(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt)
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    return state


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as a ``.safetensors`` file that :func:`load_weights` (``teacher.ckpt=``) reads.

    >>> save_weights(model, "teacher.safetensors")
    """
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load FP weights (.safetensors, or a Lightning .ckpt of an fp run) into ``model``, strictly."""
    path = Path(path)
    if not path.exists():
        raise SdqError(f"teacher checkpoint not found: {path}; pass teacher.ckpt=<fine-tuned FP checkpoint>")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else _state_from_lightning(path)
    except Exception as exc:  # noqa: BLE001 - truncated / not a checkpoint
        raise SdqError(f"cannot read teacher checkpoint {path}: {type(exc).__name__}: {exc}") from None
    missing, unexpected, shape = state_mismatch(model.state_dict(), state)
    if missing or unexpected or shape:
        example = (missing or unexpected or shape)[0]
        raise SdqError(
            f"teacher checkpoint {path} does not fit model {type(model).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shape)} mis-shaped keys, e.g. {example!r}); it was trained "
            "for another model or task: pass the matching model=/task= or another teacher.ckpt"
        )
    model.load_state_dict(state)


def cached_teacher(teacher: TeacherSettings) -> Path:
    """Where the stage-1 teacher of ``teacher.key`` is cached."""
    return Path(teacher.cache_dir) / teacher.key / "teacher.safetensors"


@contextmanager
def teacher_lock(cached: Path) -> Iterator[None]:
    """Exclusive per-teacher lock across processes (``<cache_dir>/<key>.lock``): one sweep job fine-tunes,
    the others wait and reuse its cached weights. Only global rank 0 locks: the DDP ranks of one job follow
    it through barriers (a rank waiting for the lock its rank 0 holds would deadlock the job)."""
    if rank_zero_only.rank != 0:
        yield
        return
    cached.parent.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cached.parent) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another job fine-tuning the same FP teacher (lock %s)", lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def store_teacher(out: Path, cached: Path) -> None:
    """Copy a fine-tuned teacher (and its results.json) into the cache in one atomic rename."""
    if cached.parent.exists():
        return
    tmp = cached.parent.with_name(cached.parent.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(out, tmp / cached.name)
        if (out.parent / "results.json").is_file():
            shutil.copyfile(out.parent / "results.json", tmp / "results.json")
        os.replace(tmp, cached.parent)  # a half-written teacher is never reused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def obtain_teacher(teacher: TeacherSettings, finetune: Callable[[], Path]) -> Path:
    """Path to the FP teacher weights: given (``teacher.ckpt``), cached, or ``finetune()`` (stage 1) run now
    and cached, all under :func:`teacher_lock` so parallel jobs fine-tune one teacher between them.

    >>> path = obtain_teacher(settings.teacher, lambda: finetune_teacher(...))
    """
    if teacher.ckpt:
        path = Path(teacher.ckpt)
        if not path.exists():
            raise SdqError(f"teacher.ckpt={path} does not exist; pass a fine-tuned FP checkpoint or drop teacher.ckpt")
        return path
    if not teacher.reuse:
        return finetune()
    cached = cached_teacher(teacher)
    with teacher_lock(cached):
        if cached.exists():
            log.info("reusing cached FP teacher %s", cached)
            return cached
        out = finetune()
        if rank_zero_only.rank == 0:
            store_teacher(out, cached)
        return out


def finetune_teacher(
    backbone: str,
    dm,
    stage_dir: Path,
    teacher: TeacherSettings,
    lightning: LightningSettings,
    model_name: str,
    run_config: dict | None = None,
) -> Path:
    """Stage 1: fine-tune the FP model on English for ``teacher.epochs`` (``task.epochs``, whatever
    ``trainer.max_epochs`` says: the cache key holds the task recipe), select on the average dev metric."""
    log.info("stage 1: fine-tuning the full-precision teacher (%s epochs)", teacher.epochs)
    model = build_model(backbone, dm.spec.kind, dm.num_labels)
    tags = {"model": model_name, "task": dm.spec.name, "method": "fp", "stage": "teacher"}
    with dm.validating_on(teacher.val_languages):  # selected on its own dev languages (teacher.val_languages)
        module = make_module(model, None, DistillLoss(ce=1.0), dm, teacher.recipe, teacher_bf16=teacher.bf16,
                             fingerprint={"stage": "teacher"}, run_config=run_config)
        trainer = fit_and_test(module, dm, lightning.with_epochs(teacher.epochs), stage_dir, train=True, tags=tags,
                               teacher_stage=True, test=teacher.test)
    finish_logger(trainer)  # the student stage opens its own W&B run
    out = stage_dir / "teacher.safetensors"
    if not trainer.is_global_zero:  # DDP: rank 0 writes the teacher files, the other ranks wait for them
        trainer.strategy.barrier("sdq.teacher")
        return out
    results = write_results(stage_dir, dm.spec, module.results, [], meta=tags)
    print_table(results, dm.spec)
    save_weights(model, out)
    for ckpt in (stage_dir / "checkpoints").glob("*.ckpt"):  # weights are in teacher.safetensors
        ckpt.unlink()
    trainer.strategy.barrier("sdq.teacher")
    return out
