"""Command line of the sensitivity probe: per-module and per-kind tables and a plot on data-free inputs.

``python -m sdq.calib.sensitivity_cli ckpt=teacher.safetensors out=dir [model=me5_small num_labels=3
head=seq_cls bits=4 act_bits=8 n=64]`` (Hydra overrides, ``--help`` lists them; data-free inputs, W8A8-style
config at ``bits``); writes sensitivity.csv / .md / .png into ``out``
(:func:`sdq.calib.sensitivity.write_sensitivity`). In Python: ``main(["ckpt=...", "out=..."])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sdq.calib.datafree import datafree_batches
from sdq.calib.sensitivity import kind_sensitivity, layer_sensitivity, write_sensitivity
from sdq.cli import guarded, run_hydra, run_overrides
from sdq.errors import SdqConfigError
from sdq.models import build_model, load_tokenizer, resolve_backbone
from sdq.quant.config import QuantConfig
from sdq.teacher import load_weights

HELP = """python -m sdq.calib.sensitivity_cli: quantize one module (and one kind of module) at a time and
measure the logit change on data-free inputs.

  ckpt        the FP model weights (.safetensors; required)
  out         dir for sensitivity.csv / .md / .png
  model       backbone name or path;  num_labels, head: the task head of the checkpoint
  bits        weight bits of the probed module;  act_bits: its input bits;  n: data-free examples

== Config (override any key: key=value) ==
$CONFIG"""


@dataclass
class SensitivityConfig:
    """``python -m sdq.calib.sensitivity_cli`` keys (see :data:`HELP`)."""

    ckpt: str | None = None
    out: str = "."
    model: str = "me5_small"
    num_labels: int = 3
    head: str = "seq_cls"
    bits: int = 4
    act_bits: int = 8
    n: int = 64
    # no run dir, log file or .hydra/ of its own: the probe writes only into out=
    hydra: Any = field(default_factory=lambda: {"run": {"dir": "."}, "output_subdir": None, "help": {"template": HELP}})
    defaults: list[Any] = field(default_factory=lambda: [
        "_self_", {"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}])


ConfigStore.instance().store(name="sdq_sensitivity", node=SensitivityConfig)


@guarded
def probe(cfg: DictConfig) -> list[Path]:
    """Per-module and per-kind tables + plot on data-free inputs; returns the files written."""
    if not cfg.ckpt:
        raise SdqConfigError("ckpt= is required: python -m sdq.calib.sensitivity_cli ckpt=<teacher.safetensors> "
                             "out=<dir>")
    backbone = resolve_backbone(cfg.model)
    model = build_model(backbone, cfg.head, int(cfg.num_labels))
    load_weights(model, cfg.ckpt)
    qcfg = QuantConfig.from_dict({"weight": {"bits": 8, "granularity": "channel"},
                                  "act": {"bits": 8, "symmetric": False, "granularity": "channel"},
                                  "embedding": {"bits": 8, "granularity": "row"}}).validate()
    batches = datafree_batches(load_tokenizer(backbone), n=int(cfg.n))
    bits, act_bits = int(cfg.bits), int(cfg.act_bits)
    rows = layer_sensitivity(model, qcfg, batches, bits, act_bits)
    rows += kind_sensitivity(model, qcfg, batches, bits, act_bits)
    paths = write_sensitivity(rows, Path(cfg.out), f"sensitivity: one module at w{bits}a{act_bits}")
    for p in paths:
        print(p)
    return paths


@hydra.main(version_base="1.3", config_path=None, config_name="sdq_sensitivity")
def _cli(cfg: DictConfig) -> None:
    probe(cfg)


def main(argv: list[str] | None = None) -> list[Path] | None:
    """The command line (``argv=None``), or the same overrides composed in-process."""
    return run_hydra(_cli) if argv is None else run_overrides("sdq_sensitivity", probe, argv)


if __name__ == "__main__":
    main()
