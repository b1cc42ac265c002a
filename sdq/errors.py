"""User-facing errors: one line saying what, where and how to fix.

Entry scripts catch :class:`SdqError`, print ``error: <message>`` and exit non-zero,
so bad input never ends in a traceback.

>>> raise SdqError("task 'foo' is not an XGLUE task (known: xnli, pos, ...); use task=xnli")
"""


class SdqError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SdqConfigError(SdqError, ValueError):
    """An invalid configuration value (bits, granularity, task, language, method...)."""


class SdqDataError(SdqError):
    """A missing, empty or malformed data file (message names file and line)."""


class SdqModelError(SdqError):
    """A model that cannot be found or loaded (message says where we looked)."""
