"""W&B mode by WANDB_MODE / login (no network probe), and the log lines muted at their source."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from sdq.lit.logger import WandbLogger, wandb_mode
from sdq.lit.quiet import quiet_lightning


def test_wandb_mode_follows_wandb_mode_then_login(tmp_path: Path) -> None:
    empty = tmp_path / "netrc_empty"
    empty.write_text("")
    logged = tmp_path / "netrc"
    logged.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    logged.chmod(0o600)
    assert wandb_mode(env={"NETRC": str(empty)}) == "offline"
    assert wandb_mode(env={"NETRC": str(logged)}) == "online"
    assert wandb_mode(env={"NETRC": str(empty), "WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode(env={"NETRC": str(logged), "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode(env={"WANDB_MODE": "dryrun"}) == "offline"
    assert wandb_mode("disabled", env={"NETRC": str(logged)}) == "disabled"


def test_wandb_logger_leaves_anonymous_unset(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import WandbLogger as LightningWandb

    assert "anonymous" in LightningWandb(save_dir=str(tmp_path))._wandb_init  # what W&B warns about
    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path))._wandb_init


def test_quiet_lightning_mutes_only_the_named_lines(caplog) -> None:
    quiet_lightning()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/...)")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()  # re-installs its filter in front of "always"
        for module in ("pytorch_lightning.utilities._pytree", "pytorch_lightning.loops.fit_loop"):
            warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                                   "x.py", 1, module=module)
    assert [w.filename for w in caught] == ["x.py"] and len(caught) == 1  # only the one from elsewhere
    assert logging.getLogger("transformers.distributed.tensor_parallel").level == logging.ERROR
