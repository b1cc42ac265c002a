"""Lightning data module of a task: its train data, per-language dev/test (XGLUE: zero-shot cross-lingual,
English train). A task read from its own files or dataset (a spec with a ``source``) is read and validated
whole when the module is built; ``dm.labels`` is its final label list.

>>> dm = XGLUEDataModule("xnli", root="/data/xglue_full_dataset", tokenizer=tok, batch_size=32)
>>> dm.setup("fit")
>>> dm.val_languages, len(dm.val_dataloader())      # (['en', 'ar', ...], 15)
>>> next(iter(dm.train_dataloader()))["input_ids"].shape   # (B, T) with T = longest in batch
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from sdq.data.collate import IGNORE, Collator
from sdq.data.hub import read_hub_split, require_hub
from sdq.data.own_task import OwnTaskData
from sdq.data.sib200 import subset_dir
from sdq.data.tasks import TaskSpec, get_task
from sdq.data.xglue import available_languages, read_split
from sdq.errors import SdqConfigError, SdqDataError, SdqModelError

log = logging.getLogger(__name__)


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object as given, or a fast tokenizer loaded by name/path."""
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer), use_fast=True)
    except Exception as e:  # noqa: BLE001
        raise SdqModelError(f"tokenizer {tokenizer!r} could not be loaded ({type(e).__name__}); "
                            "pass a local model folder or a tokenizer object") from None


def subsample(rows: list, n: int | None, seed: int) -> list:
    """``n`` rows picked with a seeded RNG, in their original order (all rows when n is None)."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


class XGLUEDataModule(pl.LightningDataModule):
    """Tokenizes once in ``setup``; ``val_dataloader``/``test_dataloader`` return one loader per
    language, in the order of ``val_languages``/``test_languages``."""

    def __init__(
        self,
        task: str | TaskSpec,
        root: str | Path | None = None,
        tokenizer: Any = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        languages: list[str] | None = None,
        train_lang: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        pad_to_multiple_of: int | None = None,
        val_languages: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.spec: TaskSpec = task if isinstance(task, TaskSpec) else get_task(task)
        self.own: OwnTaskData | None = None
        if self.spec.source is not None:  # own files / dataset: read and check every split now
            self.own = OwnTaskData(self.spec)
            self.spec = replace(self.spec, labels=self.own.labels)
        if tokenizer is None:
            raise SdqConfigError("XGLUEDataModule needs a tokenizer (a fast HF tokenizer object or a name)")
        self.tokenizer = load_tokenizer(tokenizer)
        if self.spec.is_token_task and not getattr(self.tokenizer, "is_fast", False):
            raise SdqConfigError(f"task {self.spec.name} needs a FAST tokenizer (word_ids); "
                                 f"got {type(self.tokenizer).__name__}")
        if self.spec.name == "sib200" and root is None:  # the subset shipped in the package
            root = subset_dir()
        self.root = Path(root) if root is not None else None
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        # the task's first language (English) unless given
        self.train_lang, self.num_workers, self.seed = train_lang or self._train_language(), num_workers, seed
        self.limit_train, self.limit_eval = limit_train, limit_eval
        self.collate = Collator(self._pad_id(), self.spec.is_token_task, pad_to_multiple_of)
        # dev languages used for model selection (e.g. ["en"]: 15x cheaper validation on CPU)
        self.val_languages = self._resolve_languages(val_languages or languages, "dev")
        self.test_languages = self._resolve_languages(languages, "test")
        self._train: list[dict] | None = None
        self._val: dict[str, list[dict]] | None = None
        self._test: dict[str, list[dict]] | None = None

    # ---- task facts used by the model side -------------------------------------------------
    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def head(self) -> str:
        return self.spec.kind

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def labels(self) -> tuple[str, ...]:
        """The final label list, index = class id (given, or read from the training data): ``id2label``."""
        return self.spec.labels

    @property
    def metric(self) -> str:
        return self.spec.metric

    # ---- languages and sources ---------------------------------------------------------------
    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            raise SdqConfigError(f"tokenizer {type(self.tokenizer).__name__} has no pad token; set one")
        return int(pad)

    @contextmanager
    def validating_on(self, languages: list[str] | None) -> Iterator[None]:
        """Dev languages ``languages`` while the block runs (None: unchanged), e.g. the teacher selected on
        English dev while the student stage selects on every language's dev agreement (no labels needed).

        >>> with dm.validating_on(["en"]):
        ...     trainer.fit(teacher_module, datamodule=dm)
        """
        if not languages:
            yield
            return
        if self._val is None:
            self.setup("validate")  # the run's own dev languages stay loaded for the later stages
        saved, self.val_languages = self.val_languages, self._resolve_languages(list(languages), "dev")
        for lang in self.val_languages:
            if lang not in self._val:
                self._val[lang] = self._load(lang, "dev", self.limit_eval)
        try:
            yield
        finally:
            self.val_languages = saved

    def _train_language(self) -> str:
        if self.own is None:
            return self.spec.languages[0]
        langs = self.own.train_languages
        return langs[0] if len(langs) == 1 else "all"

    def _resolve_languages(self, languages: list[str] | None, split: str) -> list[str]:
        if self.own is not None:  # the languages found in the task's own data
            found = self.own.languages(split)
            missing = [lang for lang in languages or () if lang not in found]
            if missing:
                raise SdqConfigError(f"data.languages: no {self.spec.name} {split} examples for "
                                     f"{', '.join(missing)} (found: {', '.join(found)}); drop them or use "
                                     "data.languages=null")
            return list(languages) if languages is not None else found
        if languages is not None and not self.spec.open_languages:  # open: checked against the files
            bad = [lang for lang in languages if lang not in self.spec.languages]
            if bad:
                raise SdqConfigError(f"languages {bad} are not in task {self.spec.name} "
                                     f"(languages: {', '.join(self.spec.languages)})")
        if self.root is None:  # the hub has every official language
            return list(languages) if languages is not None else list(self.spec.languages)
        found = available_languages(self.root, self.spec, split)
        official = found if self.spec.open_languages else self.spec.languages
        wanted = official if languages is None else languages
        missing = [lang for lang in wanted if lang not in found]
        if not found and (missing or self.spec.open_languages):
            layout = ("a SIB-200 folder (one folder per language with train.tsv, dev.tsv, test.tsv)"
                      if self.spec.name == "sib200" else "an xglue_full_dataset folder")
            raise SdqDataError(f"{self.root / self.spec.dir_name}: no {self.spec.name} {split} files; point "
                               f"data.root at {layout}")
        if languages is not None:
            if missing:
                raise SdqConfigError(
                    f"data.languages: no {self.spec.name} {split} file for {', '.join(missing)} under "
                    f"{self.root}; drop them or use data.languages=null (found: {', '.join(found) or 'none'})"
                )
            return list(languages)
        if missing:
            log.warning("%s %s: languages missing under %s, skipped: %s",
                        self.spec.name, split, self.root, ", ".join(missing))
        return found

    def _read(self, lang: str, split: str) -> list[dict]:
        if self.own is not None:
            return self.own.rows(None if split == "train" else lang, split)
        if self.root is None:
            return read_hub_split(self.spec, lang, split)
        return read_split(self.root, self.spec, lang, split)

    # ---- tokenization ------------------------------------------------------------------------
    def encode(self, rows: list[dict]) -> list[dict]:
        """Pre-tokenize reader rows to unpadded id lists with labels (and group ids)."""
        if not rows:
            return []
        tok, common = self.tokenizer, {"truncation": True, "max_length": self.max_length}
        if self.spec.is_token_task:
            enc = tok([r["tokens"] for r in rows], is_split_into_words=True, **common)
        else:
            pairs = [r["text_pair"] for r in rows]
            if all(p is not None for p in pairs):
                enc = tok([r["text"] for r in rows], pairs, truncation="longest_first",
                          max_length=self.max_length)
            else:
                enc = tok([r["text"] for r in rows], **common)
        out = []
        for i, r in enumerate(rows):
            feat = {"input_ids": enc["input_ids"][i]}
            if "token_type_ids" in enc:
                feat["token_type_ids"] = enc["token_type_ids"][i]
            if self.spec.is_token_task:
                feat["labels"] = first_subtoken_labels(enc.word_ids(i), r["labels"])
                feat["group"] = -1
            else:
                feat["labels"] = int(r["label"])
                feat["group"] = -1 if r.get("group") is None else int(r["group"])
            out.append(feat)
        return out

    def encode_unlabeled(self, rows: list[dict]) -> list[dict]:
        """Unlabeled rows (``text``, ``text_pair``; :mod:`sdq.data.unlabeled`) encoded like training examples,
        every label -100 (token tasks: the text split on whitespace into words)."""
        if self.spec.is_token_task:
            words = [r["text"].split() for r in rows]
            return self.encode([{"tokens": w, "labels": [IGNORE] * len(w)} for w in words])
        return self.encode([{"text": r["text"], "text_pair": r["text_pair"], "label": IGNORE} for r in rows])

    def _load(self, lang: str, split: str, limit: int | None) -> list[dict]:
        return self.encode(subsample(self._read(lang, split), limit, self.seed))

    def prepare_data(self) -> None:
        if self.root is None and self.own is None:
            require_hub()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train is None:
            self._train = self._load(self.train_lang, "train", self.limit_train)
            log.info("%s train (%s): %d examples", self.spec.name, self.train_lang, len(self._train))
        if stage in (None, "fit", "validate") and self._val is None:
            self._val = {lang: self._load(lang, "dev", self.limit_eval) for lang in self.val_languages}
        if stage in (None, "test", "predict") and self._test is None:
            self._test = {lang: self._load(lang, "test", self.limit_eval) for lang in self.test_languages}

    # ---- loaders -----------------------------------------------------------------------------
    def _loader(self, data: list[dict], batch_size: int, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        if not shuffle:  # evaluation: longest first, so batches pad little (metrics are order-free)
            data = sorted(data, key=lambda ex: -len(ex["input_ids"]))
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=self.collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        return self._loader(self._train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        if self._val is None:
            self.setup("validate")
        return [self._loader(self._val[lang], self.eval_batch_size, False) for lang in self.val_languages]

    def test_dataloader(self) -> list[DataLoader]:
        if self._test is None:
            self.setup("test")
        return [self._loader(self._test[lang], self.eval_batch_size, False) for lang in self.test_languages]

    def sizes(self) -> dict[str, int]:
        """Examples per split/language loaded so far, e.g. {'train/en': 1488, 'dev/de': 501}."""
        out = {f"train/{self.train_lang}": len(self._train)} if self._train is not None else {}
        for split, d in (("dev", self._val), ("test", self._test)):
            out.update({f"{split}/{lang}": len(v) for lang, v in (d or {}).items()})
        return out


def first_subtoken_labels(word_ids: list[int | None], labels: list[int]) -> list[int]:
    """Word labels on the first sub-token of each word; -100 on later sub-tokens and specials."""
    out, prev = [], None
    for w in word_ids:
        out.append(-100 if w is None or w == prev else int(labels[w]))
        prev = w
    return out
