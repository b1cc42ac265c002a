"""Activation observers agree across DDP ranks (2 gloo processes on CPU)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdq.quant import QuantizerConfig, UniformQuantizer


def _worker(rank: int, init: str, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        out = {}
        for obs in ("minmax", "ema"):
            q = UniformQuantizer(QuantizerConfig(bits=8, symmetric=False, observer=obs), (1,), "act")
            x = torch.tensor([[-1.0 - rank, 2.0 + 3 * rank]])  # rank 0: [-1, 2], rank 1: [-2, 5]
            q(x)
            out[obs] = (q.min_val.item(), q.max_val.item(), q.scale.item())
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes (~10 s)
def test_observers_all_reduced_across_ranks(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdzv'}", results), nprocs=2, join=True)
    assert results[0] == results[1]
    assert results[0]["minmax"][:2] == (-2.0, 5.0)  # MIN / MAX over ranks
    assert results[0]["ema"][:2] == (-1.5, 3.5)  # first batch: rank average
