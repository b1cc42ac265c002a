"""The sdq user cache and atomic, marker-checked cache directories.

A cached model dir is written into a sibling tmp dir and renamed into place, with a
``sdq_marker.json`` written last; a dir whose marker is missing or stale is never used.

>>> path = atomic_cache_dir(sdq_cache_dir() / "tiny_xlmr", {"kind": "tiny", "v": 1}, build_fn)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sdq.errors import SdqModelError

MARKER = "sdq_marker.json"


def sdq_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The sdq cache root: ``cache_dir``, else ``$SDQ_CACHE``, else ``~/.cache/sdq``."""
    root = cache_dir if cache_dir is not None else os.environ.get("SDQ_CACHE") or "~/.cache/sdq"
    return Path(root).expanduser()


def read_marker(path: Path) -> dict | None:
    """The marker dict of a cached dir, or None when absent/unreadable."""
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def atomic_cache_dir(final: Path, marker: dict, build: Callable[[Path], None]) -> Path:
    """Return ``final`` if its marker equals ``marker``; else build it atomically.

    ``build(tmp_dir)`` fills an empty tmp dir next to ``final``; the marker is added, then the
    tmp dir is renamed to ``final`` (a stale ``final`` is moved aside and deleted first).
    """
    if read_marker(final) == marker:
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise SdqModelError(
            f"cannot write the sdq model cache {final.parent} ({e.strerror}); "
            "set SDQ_CACHE=<writable dir>") from None
    try:
        build(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        if final.exists():  # stale or half-written: move aside, then drop
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            try:
                os.rename(final, old / "d")
            except OSError:
                pass  # another process replaced it meanwhile; checked below
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # lost a race: use the winner if valid
            if read_marker(final) != marker:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
