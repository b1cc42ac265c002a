"""Train (and evaluate per language) one configured run.

    python train.py                                   # embedded me5_small + SIB-200 subset, offline
    python train.py model=xlmr task=xnli bits=4 data.root=<xglue_full_dataset>
    python train.py -m method=ptq,qat,qat_kd,sdq bits=8,4,2

Returns the average test metric (for Hydra sweepers); writes results.json into the run dir.
"""

import hydra
from omegaconf import DictConfig

import sdq.config  # noqa: F401 - registers ${sdq_quant_tag:...} (hydra.run.dir) and ${bits_or:...} (conf/quant)
from sdq.cli import guarded, run_hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@guarded
def main(cfg: DictConfig) -> float | None:
    from sdq.pipeline import run

    results = run(cfg)
    return results[cfg.task.name].get("test", {}).get("avg")


if __name__ == "__main__":
    run_hydra(main)
