"""The on-disk cache of teacher evaluation logits: keys, identity, atomic save/load."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdq.lit.teacher_cache import TeacherLogitsCache


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (4, 7), generator=g), "attention_mask": torch.ones(4, 7, dtype=torch.long)}


def test_roundtrip_and_keys(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"weights")
    cache = TeacherLogitsCache.beside(teacher)
    k1 = cache.key(_inputs(0), "cpu", torch.float32)
    assert k1 == cache.key(_inputs(0), "cpu", torch.float32)
    assert k1 != cache.key(_inputs(1), "cpu", torch.float32)  # other batch
    assert k1 != cache.key(_inputs(0), "cuda", torch.bfloat16)  # other compute setting
    logits = torch.randn(4, 3)
    cache.put(k1, logits)
    cache.save()
    assert cache.path == tmp_path / "teacher.safetensors.eval_logits.pt" and cache.path.exists()
    again = TeacherLogitsCache.beside(teacher)
    assert torch.equal(again.get(k1), logits) and len(again) == 1
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_changed_teacher_invalidates(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"weights")
    cache = TeacherLogitsCache.beside(teacher)
    key = cache.key(_inputs(0), "cpu", torch.float32)
    cache.put(key, torch.ones(4, 3))
    cache.save()
    teacher.write_bytes(b"other weights")  # re-fine-tuned teacher: new size/mtime
    os.utime(teacher, ns=(1, 1))
    assert TeacherLogitsCache.beside(teacher).get(key) is None


def test_memory_only_without_teacher_file_and_corrupt_file(tmp_path: Path) -> None:
    cache = TeacherLogitsCache.beside(None)
    cache.put("k", torch.zeros(1))
    cache.save()  # nothing to write to, no error
    assert cache.get("k") is not None
    teacher = tmp_path / "t.safetensors"
    teacher.write_bytes(b"w")
    (tmp_path / "t.safetensors.eval_logits.pt").write_bytes(b"truncated")
    assert len(TeacherLogitsCache.beside(teacher)) == 0  # unreadable cache is ignored, not fatal


def test_parallel_jobs_fine_tune_one_teacher(tmp_path: Path) -> None:
    """Two jobs, no cached teacher: one fine-tunes under the lock, the other waits and reuses its cache."""
    import threading
    import time

    from sdq.lit.settings import Recipe, TeacherSettings
    from sdq.teacher import cached_teacher, obtain_teacher

    settings = TeacherSettings(ckpt=None, reuse=True, cache_dir=str(tmp_path / "cache"), bf16=False,
                               key="k0", epochs=1, recipe=Recipe(lr=1e-3))
    calls: list[str] = []
    got: dict[str, Path] = {}

    def job(name: str) -> None:
        def finetune() -> Path:
            calls.append(name)
            time.sleep(0.5)  # the other job arrives while this one trains
            out = tmp_path / name / "teacher" / "teacher.safetensors"
            out.parent.mkdir(parents=True)
            out.write_bytes(b"weights of " + name.encode())
            (out.parent / "results.json").write_text("{}")
            return out

        got[name] = obtain_teacher(settings, finetune)

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    cached = cached_teacher(settings)
    waited = "b" if calls == ["a"] else "a"
    assert got[waited] == cached and got[calls[0]].read_bytes() == cached.read_bytes()
    assert (cached.parent / "results.json").is_file()
    assert sorted(p.name for p in cached.parent.parent.iterdir()) == ["k0", "k0.lock"]  # no tmp dir left
