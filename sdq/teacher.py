"""The full-precision teacher: given (`teacher.ckpt=`), cached, or fine-tuned first (stage 1).

Stage-1 teachers are cached by a hash of everything that defines them (backbone, task, data,
seed, recipe), so a sweep over methods and bit-widths fine-tunes one teacher and every job
distils from the very same weights.

>>> path = obtain_teacher(cfg, backbone, dm, run_dir)   # .safetensors of the fine-tuned FP model
>>> load_weights(model, path)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn

from sdq.config import stable_hash
from sdq.errors import SdqError
from sdq.lit.builders import finish_logger
from sdq.lit.restore import state_mismatch

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


def teacher_key(cfg: DictConfig) -> str:
    """Cache key of a stage-1 teacher."""
    root = cfg.data.root
    data = {k: cfg.data.get(k) for k in ("max_length", "batch_size", "limit_train", "limit_eval", "languages")}
    if cfg.data.get("val_languages"):  # model selection languages (absent = all: older keys stay valid)
        data["val_languages"] = list(cfg.data.val_languages)  # (task.val_languages is part of "task")
    return stable_hash({
        "model": cfg.model.name_or_path, "task": dict(cfg.task), "seed": cfg.seed,
        "root": os.path.abspath(root) if root else None, "data": data,
    })


def obtain_teacher(cfg: DictConfig, backbone: str, dm, run_dir: Path) -> Path:
    """Path to the FP teacher weights: given, cached, or fine-tuned now into ``run_dir/teacher``."""
    if cfg.teacher.ckpt:
        path = Path(cfg.teacher.ckpt)
        if not path.exists():
            raise SdqError(f"teacher.ckpt={path} does not exist; pass a fine-tuned FP checkpoint or drop teacher.ckpt")
        return path
    cached = Path(cfg.teacher.cache_dir) / teacher_key(cfg) / "teacher.safetensors"
    if cfg.teacher.reuse and cached.exists():
        log.info("reusing cached FP teacher %s", cached)
        return cached
    return finetune_teacher(cfg, backbone, dm, run_dir / "teacher", cached)


def finetune_teacher(cfg: DictConfig, backbone: str, dm, stage_dir: Path, cached: Path) -> Path:
    """Stage 1: fine-tune the FP model on English, select on the average dev metric, cache weights."""
    from sdq.distill import DistillLoss
    from sdq.lit.stage import fit_and_test, make_module
    from sdq.models import build_model
    from sdq.results import print_table, write_results

    log.info("stage 1: fine-tuning the full-precision teacher (%s epochs)", cfg.task.epochs)
    model = build_model(backbone, dm.spec.kind, dm.num_labels)
    module = make_module(cfg, model, None, DistillLoss(ce=1.0), dm, float(cfg.task.lr), {"stage": "teacher"})
    tags = {"model": cfg.model.name, "task": dm.spec.name, "method": "fp", "stage": "teacher"}
    trainer = fit_and_test(cfg, module, dm, stage_dir, int(cfg.task.epochs), True, tags)
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
    if cfg.teacher.reuse:
        tmp = cached.parent.with_name(cached.parent.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, tmp / cached.name)
        (tmp / "results.json").write_text(json.dumps(results, indent=1))
        if not cached.parent.exists():
            os.replace(tmp, cached.parent)  # atomic: a half-written teacher is never reused
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    trainer.strategy.barrier("sdq.teacher")
    return out


@torch.no_grad()
def calibrate(model: nn.Module, loader, n_batches: int, learn: bool = False) -> None:
    """Observe activation/weight ranges on ``n_batches`` training batches (no gradient steps)."""
    from sdq.quant import set_phase

    was_training = model.training
    model.eval()
    set_phase(model, "calibrate")
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    set_phase(model, "learn" if learn else "frozen")
    model.train(was_training)
