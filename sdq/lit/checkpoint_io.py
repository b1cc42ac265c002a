"""Atomic checkpoints: write to a temporary file beside the target, fsync, then rename.

A crash (or SIGKILL) mid-write leaves the previous checkpoint intact and no half-written file
under the final name; a full disk becomes one clear error instead of a corrupt ``last.ckpt``.

>>> pl.Trainer(plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from sdq.errors import SdqError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise SdqError(
                    f"no space left on device writing checkpoint {path}; the previous checkpoint is intact: "
                    "free disk space or point hydra.run.dir to another disk, then resume with ckpt_path=last"
                ) from None
            raise
