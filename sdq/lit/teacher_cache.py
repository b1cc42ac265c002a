"""Disk cache of the frozen teacher's evaluation logits, shared by every job that uses that teacher.

Each student of a sweep is evaluated against the same FP teacher on the same dev/test examples;
the teacher's logits never change, so they are computed once and kept beside the teacher file
(``<teacher>.eval_logits.pt``). Entries are keyed by the batch content (token ids + mask) and the
teacher's identity (path, size, mtime) and compute setting (device type, dtype), so a changed
teacher, other data or a bf16 GPU teacher never reads stale logits. Writes are atomic.

>>> cache = TeacherLogitsCache.beside("/runs/teacher/teacher.safetensors")
>>> key = cache.key(inputs, "cpu", torch.float32)
>>> logits = cache.get(key)           # None when missing
>>> cache.put(key, logits); cache.save()
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _identity(teacher: Path) -> str:
    st = teacher.stat()
    return f"{teacher.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class TeacherLogitsCache:
    """In-memory dict of logits, loaded from and saved to one file (see module docstring)."""

    def __init__(self, path: Path | None, identity: str = "") -> None:
        self.path, self.identity = path, identity
        self._data: dict[str, torch.Tensor] = {}
        self._dirty = False
        if path is not None and path.exists():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("identity") == identity:
                    self._data = dict(saved["logits"])
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is only a cache: recompute
                log.warning("ignoring unreadable teacher logits cache %s (%s)", path, exc)

    @classmethod
    def beside(cls, teacher_ckpt: str | Path | None) -> TeacherLogitsCache:
        """The cache file next to ``teacher_ckpt``; memory-only when there is no teacher file."""
        if not teacher_ckpt or not Path(teacher_ckpt).is_file():
            return cls(None)
        teacher = Path(teacher_ckpt)
        return cls(teacher.with_name(teacher.name + ".eval_logits.pt"), _identity(teacher))

    @staticmethod
    def key(inputs: dict[str, torch.Tensor], device_type: str, dtype: torch.dtype) -> str:
        """Hash of the batch's model inputs and of how the teacher computes."""
        h = hashlib.sha1(f"{device_type}|{dtype}".encode())
        for name in sorted(inputs):
            t = inputs[name].detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        return self._data.get(key)

    def put(self, key: str, logits: torch.Tensor) -> None:
        self._data[key] = logits.detach().cpu()
        self._dirty = True

    def __len__(self) -> int:
        return len(self._data)

    def save(self) -> None:
        """Write new entries (atomically; a read-only teacher dir just keeps the cache in memory)."""
        if self.path is None or not self._dirty:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            torch.save({"identity": self.identity, "logits": self._data}, tmp)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not write teacher logits cache %s (%s); continuing without it", self.path, exc)
