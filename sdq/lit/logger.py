"""The stage's logger from ``conf/logger`` (``_target_``), W&B mode by W&B's own ``WANDB_MODE``.

W&B runs online when ``WANDB_MODE`` says so or when you are logged in (``wandb login``: an API key in
``WANDB_API_KEY`` or ``~/.netrc``), offline otherwise (sync later with ``wandb sync <dir>/wandb/offline-run-*``).

>>> logger = build_logger(settings.logger, run_dir, {"model": "tiny", "task": "xnli"}, run_config)
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.loggers import WandbLogger as _WandbLogger


def wandb_logged_in(env: dict[str, str] | None = None) -> bool:
    """An API key in ``WANDB_API_KEY`` or a ``~/.netrc`` (``NETRC``) entry for the W&B host (no network)."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(env.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(mode: str | None = None, env: dict[str, str] | None = None) -> str:
    """``mode`` or ``WANDB_MODE`` when given (``dryrun`` = ``offline``), else ``online`` when logged in,
    else ``offline``.

    >>> wandb_mode()   # "offline" with neither WANDB_MODE nor a W&B login
    """
    env = os.environ if env is None else env
    mode = mode or env.get("WANDB_MODE")
    if mode in (None, "", "auto"):
        return "online" if wandb_logged_in(env) else "offline"
    return "offline" if mode == "dryrun" else str(mode)


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger`` that leaves W&B's deprecated ``anonymous`` setting unset (W&B warns
    whenever it is passed, even as ``None``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def build_logger(node: dict | None, save_dir: Path, tags: dict[str, str], run_config: dict | None = None):
    """The configured logger writing into ``save_dir`` (the stage dir), or ``False`` for none.

    W&B: ``wandb.init(mode=...)`` from :func:`wandb_mode` unless ``offline``/``mode`` is set; ``tags``/``group``/``name`` left null
    in the config come from the stage's ``tags``.
    """
    if not node or not node.get("_target_"):
        return False
    node = {**node, "save_dir": str(save_dir)}
    target = str(node["_target_"])
    if target.rsplit(".", 1)[-1] == "WandbLogger":
        if not node.get("offline") and node.get("mode") is None:
            node["mode"] = wandb_mode()  # -> wandb.init(mode=...)
        if node.get("tags") is None:
            node["tags"] = [f"{k}={v}" for k, v in tags.items()]
        if node.get("group") is None:
            node["group"] = f"{tags.get('task')}-{tags.get('model')}"
        if node.get("name") is None:
            node["name"] = "-".join(str(v) for v in tags.values())
    logger = hydra.utils.instantiate(node, _convert_="object")
    if isinstance(logger, Logger):
        logger.log_hyperparams({**tags, "config": run_config or {}})
    return logger


def finish_logger(trainer: pl.Trainer) -> None:
    """Close the stage's W&B run: the next stage (or the next job of an in-process Hydra sweep) must get
    its own run, not be appended to this one (``wandb.init`` reuses a run that is still open)."""
    for logger in trainer.loggers:
        if isinstance(logger, _WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()
