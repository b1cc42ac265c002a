"""A config-declared task's data, read and validated at once: every file (or dataset split) of train,
dev and test, the label set (given, or read from the training data), the languages found.

Languages: ``{lang}`` in ``task.eval`` (one file per language), else the ``task.columns.language`` column,
else ``task.default_language``. Training uses every row of the train data, whatever its language.

>>> data = OwnTaskData(task_from_config(cfg.task))
>>> data.labels, data.languages("test")            # (('negative', 'neutral', 'positive'), ['en', 'de'])
>>> data.rows("de", "test")[0]                     # {"text", "text_pair", "label": 2, "group": None}
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from sdq.data.hf_source import read_dataset
from sdq.data.own_files import read_records
from sdq.data.tasks import TaskSpec
from sdq.errors import SdqDataError

EVAL_SPLITS = ("dev", "test")


def _label_order(labels: set[str]) -> tuple[str, ...]:
    """Numbers in numeric order (``1 < 2 < 10``), other names alphabetically."""
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


class OwnTaskData:
    """Reads everything in ``__init__`` (fail fast); ``rows(lang, split)`` gives reader dicts with label ids."""

    def __init__(self, spec: TaskSpec) -> None:
        if spec.source is None:
            raise SdqDataError(f"task {spec.name} has no own data source (task.train / task.eval / task.dataset)")
        self.spec, self.source = spec, spec.source
        self.source.check()
        self.token_task = spec.is_token_task
        self._alias = dict(spec.aliases)
        self._records: dict[str, list[dict]] = {}
        names = None
        if self.source.is_dataset:
            self._records, names = read_dataset(self.source, self.token_task)
        else:
            self._read_files()
        given = spec.labels or (tuple(names) if names else ())
        self.labels: tuple[str, ...] = given or self._labels_from_train()
        self.from_train = not given
        self._check_labels()

    # ---- reading ------------------------------------------------------------------------------
    def _read(self, path: Path, lang: str) -> list[dict]:
        return read_records(path, self.source.format, self.source.columns, self.token_task, lang)

    def _eval_files(self, split: str) -> dict[str, Path]:
        """language -> file of ``split`` (key "" when the template has no ``{lang}``)."""
        template = str(self.source.eval_path(split))
        if not self.source.per_language_files:
            return {"": Path(template)}
        pattern = re.compile("^" + re.escape(template).replace(re.escape("{lang}"), "([^/]+)") + "$")
        found = {}
        for name in sorted(glob.glob(template.replace("{lang}", "*"))):
            m = pattern.match(name)
            if m and len(set(m.groups())) == 1 and Path(name).is_file():
                found[m.group(1)] = Path(name)
        if not found:
            raise SdqDataError(f"task.eval={self.source.eval}: no {split} file matches {template}; "
                               "check the folder and the file names")
        return found

    def _read_files(self) -> None:
        src = self.source
        self._records["train"] = self._read(Path(src.train), src.default_language)
        for split in EVAL_SPLITS:
            recs: list[dict] = []
            for lang, path in self._eval_files(split).items():
                file_recs = self._read(path, lang or src.default_language)
                if lang:  # the file name gives the language (over a language column)
                    file_recs = [{**r, "lang": lang} for r in file_recs]
                recs += file_recs
            self._records[split] = recs

    # ---- labels -------------------------------------------------------------------------------
    def _canon(self, raw: str) -> str:
        return self._alias.get(raw, raw)

    def _labels_from_train(self) -> tuple[str, ...]:
        seen = set()
        for r in self._records["train"]:
            seen.update(map(self._canon, r["label"] if self.token_task else [r["label"]]))
        return _label_order(seen)

    def _check_labels(self) -> None:
        known = set(self.labels)
        origin = (f"read from the training data {self._train_where()}" if self.from_train else "task.labels")
        for recs in self._records.values():
            for r in recs:
                for raw in (r["label"] if self.token_task else [r["label"]]):
                    if self._canon(raw) not in known:
                        raise SdqDataError(
                            f"{r['where']}: label {raw!r} is not in the label set ({origin}: "
                            f"{', '.join(self.labels)}); fix the row, or list every label in task.labels")

    def _train_where(self) -> str:
        src = self.source
        return src.train if not src.is_dataset else f"{src.dataset}[{src.split_name('train')}]"

    # ---- languages and rows -------------------------------------------------------------------
    @property
    def train_languages(self) -> list[str]:
        return sorted({r["lang"] for r in self._records["train"]})

    def languages(self, split: str) -> list[str]:
        """Languages of ``split``: the training languages first, then by name."""
        train = self.train_languages
        langs = {r["lang"] for r in self._records[split]}
        return sorted(langs, key=lambda x: (x not in train, x))

    def rows(self, lang: str | None, split: str) -> list[dict]:
        """Reader dicts of ``split`` (of ``lang``; None: every row) with label ids and rank groups."""
        recs = [r for r in self._records[split] if lang is None or r["lang"] == lang]
        if not recs:
            raise SdqDataError(f"task {self.spec.name}: no {split} examples for language {lang!r} "
                               f"(found: {', '.join(self.languages(split))}); drop it from data.languages")
        index = {label: i for i, label in enumerate(self.labels)}
        if self.token_task:
            return [{"tokens": r["text"], "labels": [index[self._canon(t)] for t in r["label"]]} for r in recs]
        queries: dict[str, int] = {}
        return [{"text": r["text"], "text_pair": r["text_pair"], "label": index[self._canon(r["label"])],
                 "group": queries.setdefault(r["query"], len(queries)) if r["query"] is not None else None}
                for r in recs]
