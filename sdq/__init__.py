"""sdq: Self-Distilled Quantization for multilingual transformer encoders.

>>> import sdq
>>> student = sdq.load_student("outputs/.../checkpoints/best.ckpt")     # a trained checkpoint, in one call
>>> model = sdq.load_quantized("export/xnli_w8a8", backend="int8")   # = sdq.export.load_quantized
"""

__version__ = "0.1.0"

_LAZY = {"load_quantized": "sdq.export", "export_quantized": "sdq.export", "load_student": "sdq.lit.restore"}


def __getattr__(name: str):
    """Top-level shortcuts, imported on first use (``import sdq`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdq' has no attribute {name!r}")
