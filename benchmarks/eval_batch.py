"""Evaluation throughput per ``data.eval_batch_size``, side by side in one run: the FP model's forward on
the same length-sorted test loaders the test stage uses (SIB-200 subset, a few languages of different
scripts), batch sizes timed round-robin so machine load hits all alike; examples/s and the ratio to the
fastest are printed.

    python benchmarks/eval_batch.py                      # me5_small, 4 languages x 204, sizes 8 16 32 64
    python benchmarks/eval_batch.py --model tiny --sizes 8 64 --rounds 1    # quick check
"""

from __future__ import annotations

import argparse
import time

import torch

from sdq.data.datamodule import XGLUEDataModule
from sdq.models import load_tokenizer, resolve_backbone
from sdq.models.backbone import build_model

LANGS = ["eng_Latn", "zho_Hans", "hin_Deva", "swh_Latn"]


def main(argv: list[str] | None = None) -> dict[int, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="me5_small")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    backbone = resolve_backbone(args.model)
    dm = XGLUEDataModule("sib200", tokenizer=load_tokenizer(backbone), languages=LANGS, val_languages=LANGS[:1])
    dm.setup("test")
    n = sum(len(dm._test[lang]) for lang in dm.test_languages)
    model = build_model(backbone, "seq_cls", 7).eval()
    seconds = dict.fromkeys(args.sizes, 0.0)
    with torch.inference_mode():
        for _ in range(args.rounds):
            for bs in args.sizes:
                dm.eval_batch_size = bs
                t = time.perf_counter()
                for loader in dm.test_dataloader():
                    for batch in loader:
                        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                seconds[bs] += time.perf_counter() - t
    rate = {bs: n * args.rounds / s for bs, s in seconds.items()}
    best = max(rate.values())
    print(f"{args.model}: {n} test examples ({', '.join(LANGS)}), {torch.get_num_threads()} threads")
    print("eval_batch_size  examples/s  vs fastest")
    for bs, r in rate.items():
        print(f"{bs:15d}  {r:10.1f}  {r / best:9.2f}x")
    return rate


if __name__ == "__main__":
    main()
