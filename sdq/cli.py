"""Entry-point guard: user errors become one line on stderr and a non-zero exit, not a traceback.

>>> @guarded
... def main(cfg): ...
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from sdq.errors import SdqError

EXIT_USER_ERROR = 2


def quiet_third_party() -> None:
    """Keep the console readable: no HF/Lightning chatter that is not actionable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("transformers.modeling_utils", "lightning.pytorch.utilities.rank_zero", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an :class:`SdqError`, also when Hydra's ``instantiate`` wrapped it (then
    with the config node it came from: ``(config: method.loss)``); None for any other exception."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, SdqError):
        cause = cause.__cause__
    if cause is None:
        return None
    where = next((ln.split(":", 1)[1].strip() for ln in str(exc).splitlines() if ln.startswith("full_key:")), "")
    return f"{cause} (config: {where})" if where and cause is not exc else str(cause)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; on :class:`SdqError` (raised, or wrapped by Hydra's ``instantiate``) print
    ``error: <message>`` and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_third_party()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr, flush=True)
            if os.environ.get("SDQ_FULL_ERROR"):
                raise
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def check_group_overrides(argv: list[str], conf_dir: str | os.PathLike) -> None:
    """Exit 2 with one ``error:`` line when ``group=name`` names no file in ``conf/<group>/``.

    Hydra would print a multi-line composition error; this runs before it, on ``sys.argv[1:]``.

    >>> check_group_overrides(["task=xnli", "bits=4"], "conf")   # passes silently
    """
    from pathlib import Path

    conf = Path(conf_dir)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or "." in key or "/" in key or not (conf / key).is_dir() or key == "hydra":
            continue
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for name in value.split(","):  # multirun: method=ptq,qat
            if name and name != "null" and name not in options:
                print(f"error: {key}={name} is not a config in {conf / key}; choose one of: "
                      f"{', '.join(options)}", file=sys.stderr, flush=True)
                sys.exit(EXIT_USER_ERROR)
