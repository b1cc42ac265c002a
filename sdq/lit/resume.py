"""Exact resume: which checkpoint a stage continues from, and the state Lightning does not restore.

Lightning restores weights (student and every quantizer buffer/parameter: scales, zero points,
codebooks, learned steps, phase), optimizer, scheduler, loop progress and callbacks. Two things it
leaves out are added here by the :class:`ExactResume` callback:

* the RNG states (Python, NumPy, torch CPU/CUDA) at the moment of the checkpoint (dropout, quant
  noise), applied right before training continues;
* the data position: resumed mid-epoch, the first ``n`` batches of the epoch's (seeded, see
  :mod:`sdq.lit.data`) order are skipped, so training goes on exactly where it stopped.

>>> path = resolve_ckpt_path(run_dir, "last")   # None: nothing to resume
>>> pl.Trainer(callbacks=[ExactResume()]).fit(module, datamodule=dm, ckpt_path=path)
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from sdq.errors import SdqError
from sdq.lit.data import MixedBatchSampler, ResumableSampler

log = logging.getLogger(__name__)


def resume_requested(ckpt_path: str | None, resume: bool = False) -> bool:
    """``ckpt_path=last`` or ``resume=true``: every stage continues from its own last checkpoint."""
    return bool(resume) or str(ckpt_path) == "last"


def resolve_ckpt_path(stage_dir: Path, ckpt_path: str | Path | None, resume: bool = False) -> str | None:
    """The checkpoint a stage resumes from: ``last`` -> ``<stage_dir>/checkpoints/last.ckpt`` when it
    exists (else a fresh start), an explicit path must exist; ``None`` with ``resume`` = ``last``."""
    if ckpt_path is None and resume:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        last = Path(stage_dir) / "checkpoints" / "last.ckpt"
        for stale in last.parent.glob(".*.ckpt.tmp*"):  # a write cut short by a crash (never a final name)
            stale.unlink(missing_ok=True)
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.warning("resume requested but %s does not exist yet: starting this stage from scratch", last)
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise SdqError(f"ckpt_path={path} does not exist; pass <run dir>/checkpoints/last.ckpt, or ckpt_path=last "
                       "with hydra.run.dir=<the run dir> to resume a run")
    return str(path)


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),  # plain types: weights_only loads
              "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states` (CUDA states only when the device count matches)."""
    random.setstate(states["python"])
    name, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ExactResume(Callback):
    """Saves the RNG states with every checkpoint; on resume restores them and the epoch's data position."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fit_loop.restarted_mid_epoch:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # batches trained this epoch
            loaders = trainer.train_dataloader
            for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
                if isinstance(getattr(loader, "batch_sampler", None), MixedBatchSampler):
                    loader.batch_sampler.skip(done)  # labelled and unlabeled streams together
                elif isinstance(getattr(loader, "sampler", None), ResumableSampler):
                    loader.sampler.skip(done * loader.batch_size)
                else:
                    log.warning("train loader cannot skip the %d batches already seen this epoch", done)
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
