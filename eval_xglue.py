"""Evaluate a checkpoint per language, report or compare runs, and gate regressions (conf/eval.yaml).

    python eval_xglue.py ckpt=<run dir> task=xnli data.root=../shared/data/mini-xglue data.limit_eval=500
    python eval_xglue.py compare=multirun/<time>
    python eval_xglue.py results=<run dir> reference=<teacher run dir> gate.max_drop=0.5 \
        gate.max_lang_drop=1.0
    python eval_xglue.py --cfg job          # every option

Exit status: 0 ok, 2 bad input (one `error:` line), 3 the regression gate failed.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sdq.cli import guarded, run_hydra

# conf/eval.yaml is the primary config of a ConfigStore entry (as sdq.export's dataclass) rather than read
# through config_path="conf": there, the conf/task/ group of train.py would turn `task=xnli` into a
# config-group choice instead of a plain value.
ConfigStore.instance().store(name="eval", node=OmegaConf.load(Path(__file__).parent / "conf" / "eval.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="eval")
@guarded
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from sdq.report.runner import run_eval

    status = run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    run_hydra(main)
