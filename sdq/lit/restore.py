"""Rebuild a trained student (or teacher) from a run checkpoint, with no Hydra or datamodule.

A Lightning checkpoint written by sdq holds the run's resolved config under
``checkpoint["sdq"]["config"]``: the backbone, the task head and the quant preset are rebuilt
from it and the weights and quantizer state loaded strictly.

>>> student = load_student("outputs/.../checkpoints/best.ckpt")
>>> cfg = checkpoint_config("outputs/.../checkpoints/best.ckpt")
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sdq.config import quant_dict
from sdq.data.task_config import task_from_config
from sdq.errors import SdqError
from sdq.models import build_model, resolve_backbone
from sdq.quant import QuantConfig, prepare


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint on CPU with a clear error when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SdqError(f"checkpoint not found: {path}; pass ckpt=<run dir>/checkpoints/best.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on corrupt files
        raise SdqError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); is it truncated?") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SdqError(f"{path} is not a Lightning checkpoint written by sdq (no state_dict)")
    return ckpt


def state_mismatch(own: dict, state: dict) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``own`` missing from ``state``, keys of ``state`` not in ``own``, and keys whose shapes differ.

    >>> missing, unexpected, shape = state_mismatch(model.state_dict(), loaded)
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    return missing, unexpected, shape


def checkpoint_config(ckpt: dict | str | Path) -> DictConfig:
    """The resolved run config stored in an sdq checkpoint."""
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)
    cfg = (ckpt.get("sdq") or {}).get("config")
    if not cfg:
        raise SdqError("checkpoint has no sdq run config (written by another tool?); evaluate it with its own code")
    return OmegaConf.create(cfg)


def build_from_config(cfg: DictConfig, quantize: bool) -> nn.Module:
    """A fresh model (backbone + task head, quantizers prepared when asked) for ``cfg``."""
    spec = task_from_config(cfg.task)  # the run stored its final task.labels
    model = build_model(resolve_backbone(cfg.model.name_or_path), spec.kind, len(spec.labels))
    if quantize:
        prepare(model, QuantConfig.from_dict(quant_dict(cfg)))
    return model


def load_student(path: str | Path, prefix: str = "student.") -> nn.Module:
    """The trained (possibly fake-quantized) student of an sdq checkpoint, in eval mode."""
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    quantize = bool(cfg.method.quantize) and prefix == "student."
    model = build_from_config(cfg, quantize)
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise SdqError(f"checkpoint {path} holds no '{prefix[:-1]}' weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SdqError(f"checkpoint {path} does not match its own config ({first})") from None
    return model.eval()
