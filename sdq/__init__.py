"""sdq: Self-Distilled Quantization for multilingual transformer encoders."""

__version__ = "0.1.0"
