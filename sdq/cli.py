"""Entry points: user errors become one line on stderr and exit status 2, not a traceback.

Every script runs its ``@hydra.main`` function through :func:`run_hydra` (Hydra's own input errors: unknown
key, unknown config-group option, malformed override) and wraps the job in :func:`guarded` (SdqError):

>>> @hydra.main(version_base="1.3", config_path="conf", config_name="config")
... @guarded
... def main(cfg): ...
>>> if __name__ == "__main__":
...     run_hydra(main)
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
_job_started = False  # set by guarded(): an exception after it is the job's, not the command line's


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
        global _job_started
        _job_started = True
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


def run_hydra(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function; an error before the job starts (Hydra composing the config from the
    command line, the config dirs and ``hydra.searchpath``) prints one ``error:`` line and exits 2.

    Sweeps (``-m``), ``--config-dir``, ``--help`` behave as Hydra documents them; ``--cfg`` resolves
    interpolations (Hydra's ``--resolve``), so it shows what the run uses; errors inside
    the job are :func:`guarded`'s. ``SDQ_FULL_ERROR=1`` (or ``HYDRA_FULL_ERROR=1``) re-raises as well.
    """
    global _job_started
    _job_started = False
    if ({"--cfg", "-c"} & set(sys.argv)) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # --cfg shows the values the run uses (bits=4 -> quant.weight.bits: 4)
    user_full = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them and exiting 1
    try:
        return main()
    except Exception as exc:
        if _job_started:
            raise
        print(f"error: {hydra_error_line(exc)}", file=sys.stderr, flush=True)
        if os.environ.get("SDQ_FULL_ERROR") or user_full:
            raise
        sys.exit(EXIT_USER_ERROR)
    finally:
        if user_full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def run_overrides(config_name: str, job: Callable[[Any], Any], overrides: list[str]) -> Any:
    """In-process twin of a command line whose config is in the ConfigStore: compose ``config_name`` with
    ``overrides`` and run ``job(cfg)`` under :func:`run_hydra` (tests, notebooks).

    >>> run_overrides("sdq_export", export, ["ckpt=best.ckpt", "out=export"])
    """
    def composed() -> Any:
        from hydra import compose, initialize

        with initialize(version_base="1.3", config_path=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        return job(cfg)

    return run_hydra(composed)


def hydra_error_line(exc: BaseException) -> str:
    """One line for an error Hydra raised while reading the command line and composing the config."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__
    if isinstance(exc, OverrideParseException):
        why = " ".join(ln.strip() for ln in exc.message.splitlines()
                       if ln.strip() and "hydra.cc" not in ln and not ln.startswith("Error parsing override"))
        return (f"cannot parse the override {exc.override!r}{': ' + why if why else ''} (write key=value; quote "
                "values holding spaces or special characters: 'key=\"a value\"'; see "
                "https://hydra.cc/docs/advanced/override_grammar/basic)")
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return (f"{group}={name} is not a config of the {group} group; choose one of: {', '.join(exc.options)} "
                f"(or add {group}/{name}.yaml to your own config dir: --config-dir <dir> or "
                "hydra.searchpath=[file://<dir>])")
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.full_key:  # a misspelt or new key
        add = next((ln.split(" use ", 1)[1] for ln in str(exc).splitlines() if " use +" in ln),
                   f"+{cause.full_key}=...")
        return f"{cause.full_key} is not a config key ({_did_you_mean(cause)}add a new key with {add})"
    text = str(exc).split("\n\n", 1)[0]  # Hydra appends the config search path after a blank line
    if cause is not None and str(cause).strip():
        text += f": {str(cause).splitlines()[0]}"
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or type(exc).__name__


def _did_you_mean(err: Any) -> str:
    import difflib

    parent, key = getattr(err, "parent_node", None), str(getattr(err, "key", "") or "")
    keys = [str(k) for k in parent if k != "hydra"] if parent is not None and hasattr(parent, "keys") else []
    near = difflib.get_close_matches(key, keys, n=1)
    prefix = err.full_key[: -len(key)] if key and err.full_key.endswith(key) else ""
    return f"did you mean {prefix}{near[0]}? " if near else (f"keys here: {', '.join(keys)}; " if keys else "")
