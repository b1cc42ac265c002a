"""Data loading for exact resume and DDP: a seeded per-epoch sampler that can skip consumed batches.

The training order of epoch ``e`` is ``randperm(n, seed + e)`` (the permutation of torch's
``DistributedSampler``), so it does not depend on how many epochs ran in *this* process: a run
resumed mid-epoch from a checkpoint replays the very same order and skips the batches already
trained on. Under DDP each rank takes ``perm[rank::world]``, so the union of the ranks' batches at
a step is the single-process batch of the same global size. Evaluation loaders are sharded without
padding (no example counted twice) into the same number of batches on every rank (collectives in
observers stay in step); the module gathers the per-language predictions of all ranks. Lightning's
own sampler injection is off (``use_distributed_sampler=False``): these loaders shard themselves.

>>> dm = ResumableDataModule("xnli", root=..., tokenizer=tok, batch_size=16, seed=42)
>>> loader = dm.train_dataloader()          # sampler: ResumableSampler (epoch 0 order)
>>> loader.sampler.set_epoch(1); loader.sampler.skip(3 * 16)   # resume: epoch 1 after 3 batches
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sized

import torch
from pytorch_lightning.trainer.states import TrainerStatus
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from sdq.data.datamodule import XGLUEDataModule
from sdq.errors import SdqError


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle by ``seed + epoch``) that can start ``n`` samples into the epoch.

    ``num_replicas=1, rank=0`` is the single-process sampler. ``skip(n)`` applies to the next
    iteration only (Lightning calls ``set_epoch`` before each epoch).
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._skip = 0

    def skip(self, n_samples: int) -> None:
        """Leave out the first ``n_samples`` indices of this rank in the next iteration."""
        self._skip = max(0, int(n_samples))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # randperm(len, seed + epoch)[rank::world], padded
        start, self._skip = self._skip, 0
        yield from indices[start:]


class MixedBatchSampler(Sampler[list[int]]):
    """Training batches of ``batch_size`` labelled indices (``sampler``'s order) each followed by ``per_step``
    unlabeled ones (``n_labelled + i``): labelled data drives the epoch, unlabeled data rides along.

    The unlabeled indices of the epoch's batch ``k`` are positions ``[(g * world + rank) * U, + U)``, with
    ``g = epoch * len(self) + k``, of an endless chain of seeded permutations of the pool: a function of
    (epoch, k) alone, so a mid-epoch resume that skips ``k`` batches continues both streams exactly, and DDP
    ranks take disjoint slices. Lightning's ``set_epoch`` reaches ``sampler`` (``batch_sampler.sampler``).

    >>> bs = MixedBatchSampler(ResumableSampler(train, seed=42), 32, len(train), len(pool), per_step=32, seed=42)
    >>> next(iter(bs))[:32], next(iter(bs))[32:]     # labelled indices, then pool indices + len(train)
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int, n_labelled: int, n_unlabeled: int,
                 per_step: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.sampler, self.batch_size, self.per_step = sampler, int(batch_size), int(per_step)
        self.n_labelled, self.n_unlabeled, self.seed = n_labelled, n_unlabeled, seed
        self.world, self.rank, self._skip = num_replicas, rank, 0
        self._perms: dict[int, list[int]] = {}

    def skip(self, n_batches: int) -> None:
        """Leave out the first ``n_batches`` of the next iteration (both streams)."""
        self._skip = max(0, int(n_batches))

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _pool(self, pos: int) -> int:
        cycle, i = divmod(pos, self.n_unlabeled)
        if cycle not in self._perms:
            self._perms = {cycle: torch.randperm(self.n_unlabeled, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + cycle)).tolist()}  # one cycle held at a time
        return self._perms[cycle][i]

    def __iter__(self) -> Iterator[list[int]]:
        order, n = list(iter(self.sampler)), len(self)
        start, self._skip = self._skip, 0
        for k in range(start, n):
            g = self.sampler.epoch * n + k
            first = (g * self.world + self.rank) * self.per_step
            yield order[k * self.batch_size:(k + 1) * self.batch_size] + [
                self.n_labelled + self._pool(p) for p in range(first, first + self.per_step)]


class EvenShardBatches(Sampler[list[int]]):
    """Evaluation batches of one rank: contiguous slices of the (length-sorted) data, every rank the same
    number of non-empty batches of at most about ``batch_size``, each example on exactly one rank."""

    def __init__(self, n: int, batch_size: int, num_replicas: int, rank: int, where: str = "evaluation set") -> None:
        if n < num_replicas:
            raise SdqError(f"{where} has {n} examples, fewer than the {num_replicas} DDP processes; "
                           "use fewer devices or more evaluation data (data.limit_eval)")
        steps = min(math.ceil(n / (num_replicas * batch_size)), n // num_replicas)
        bounds = [round(i * n / steps) for i in range(steps + 1)]  # global chunks, each >= num_replicas
        self.batches = []
        for lo, hi in itertools.pairwise(bounds):
            size = hi - lo
            self.batches.append(list(range(lo + rank * size // num_replicas, lo + (rank + 1) * size // num_replicas)))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableDataModule(XGLUEDataModule):
    """:class:`XGLUEDataModule` whose loaders shard for DDP themselves and resume mid-epoch.

    Loaders requested outside a running trainer (calibration, the diagnostics batch) are never
    sharded, so every rank calibrates on the same batches.
    """

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or trainer.state.status != TrainerStatus.RUNNING:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _make(self, data: list[dict], **how) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)  # iterator seeds: no draw from the global RNG
        return DataLoader(data, generator=gen, collate_fn=self.collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **how)

    unlabeled: list[dict] | None = None  # encoded unlabeled pool mixed into training (set_unlabeled)
    unlabeled_per_step: int = 0

    def set_unlabeled(self, pool: list[dict] | None, per_step: int = 0) -> None:
        """Mix ``per_step`` examples of the encoded unlabeled ``pool`` (labels -100) into every training
        batch from now on (the student stage); ``None`` turns it off."""
        self.unlabeled, self.unlabeled_per_step = (pool, int(per_step)) if pool and per_step > 0 else (None, 0)

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        world, rank = self._replicas()
        sampler = ResumableSampler(self._train, world, rank, self.seed)
        if self.unlabeled is None:
            return self._make(self._train, batch_size=self.batch_size, sampler=sampler)
        mixed = MixedBatchSampler(sampler, self.batch_size, len(self._train), len(self.unlabeled),
                                  self.unlabeled_per_step, self.seed, world, rank)
        return self._make(self._train + self.unlabeled, batch_sampler=mixed)

    def _eval_loaders(self, per_lang: dict[str, list[dict]], languages: list[str], split: str) -> list[DataLoader]:
        world, rank = self._replicas()
        out = []
        for lang in languages:
            data = sorted(per_lang[lang], key=lambda ex: -len(ex["input_ids"]))  # longest first: little padding
            if world == 1:
                out.append(self._make(data, batch_size=self.eval_batch_size, shuffle=False))
            else:
                where = f"{self.spec.name} {split} {lang}"
                out.append(self._make(data, batch_sampler=EvenShardBatches(len(data), self.eval_batch_size,
                                                                             world, rank, where)))
        return out

    def val_dataloader(self) -> list[DataLoader]:
        if self._val is None:
            self.setup("validate")
        return self._eval_loaders(self._val, self.val_languages, "dev")

    def test_dataloader(self) -> list[DataLoader]:
        if self._test is None:
            self.setup("test")
        return self._eval_loaders(self._test, self.test_languages, "test")
