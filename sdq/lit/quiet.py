"""Mute the lines Lightning and transformers print on every run that carry no information for an sdq
user, each by its own message at its own logger (nothing else is filtered).

* Lightning's "💡 Tip: ... litlogger" advertisement (``rank_zero_info`` whenever no LitLogger is used);
* Lightning's own use of a deprecated torch ``_pytree`` API (``isinstance(treespec, LeafSpec)``);
* transformers' tensor-parallel check "The following layers were not sharded", which it runs on plain
  single-device loads once ``transformers.modeling_utils`` logs at WARNING or above.

>>> quiet_lightning()   # idempotent; called by sdq.lit.builders.build_trainer and sdq.pipeline.run
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class DropMessages(logging.Filter):
    """Drops records whose message contains one of ``fragments``."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


_LITLOGGER_TIP = DropMessages("try installing [litlogger]")


def quiet_lightning() -> None:
    """Install the three targeted filters described in the module docstring."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _LITLOGGER_TIP not in logger.filters:
            logger.addFilter(_LITLOGGER_TIP)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"pytorch_lightning\.utilities\._pytree|lightning\.pytorch\.utilities\._pytree")
    logging.getLogger("transformers.distributed.tensor_parallel").setLevel(logging.ERROR)
