"""XGLUE data room: task registry, readers (local layout / hub / embedded SIB-200 subset), metrics, datamodule.

Import the submodules directly (``sdq.data.tasks``, ``sdq.data.xglue``, ``sdq.data.metrics``,
``sdq.data.datamodule``); this package imports nothing heavy on purpose.
"""
