"""Task specs: kind, languages, label set, metric and where the data is. The built-in XGLUE tasks and
SIB-200 are registered here (official languages, English first); a task declared in a config (own files
or a ``datasets`` dataset) is built by :func:`sdq.data.task_config.task_from_config` with a ``source``.

>>> spec = get_task("xnli")
>>> spec.kind, spec.metric, spec.labels
('seq_cls', 'acc', ('contradiction', 'entailment', 'neutral'))
>>> spec.label_id("contradictory")   # alias used by the MNLI train file
0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdq.data.sib200 import LABELS as SIB200_LABELS
from sdq.data.sib200 import SUBSET_LANGUAGES
from sdq.errors import SdqConfigError

NER_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
UPOS_TAGS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
NC_CATEGORIES = (
    "foodanddrink", "sports", "travel", "finance", "lifestyle",
    "news", "entertainment", "health", "video", "autos",
)  # fmt: skip


# Config kinds; ``pair_cls`` is a sentence-pair ``seq_cls`` task (same head).
KINDS = ("seq_cls", "pair_cls", "token_cls", "rank")


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``aliases`` maps alternative label spellings to a canonical label; ``source``
    (:class:`sdq.data.source.DataSource`) is set for a task read from its own files or dataset."""

    name: str
    kind: str  # seq_cls | token_cls | rank
    languages: tuple[str, ...]
    labels: tuple[str, ...]
    metric: str  # acc | f1 | ndcg
    dir_name: str
    aliases: tuple[tuple[str, str], ...] = ()
    # True: ``languages`` is the embedded default; a data root may hold others (found as folders there)
    open_languages: bool = False
    source: Any = None  # DataSource of a config-declared task; None: the built-in layout of ``name``

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_token_task(self) -> bool:
        return self.kind == "token_cls"

    def label_id(self, raw: str) -> int | None:
        """Index of a label string (aliases allowed); None when it is not in the label set."""
        raw = raw.strip()
        raw = dict(self.aliases).get(raw, raw)
        try:
            return self.labels.index(raw)
        except ValueError:
            return None

    def accepted_labels(self) -> list[str]:
        """Every accepted spelling, for error messages."""
        return list(self.labels) + [a for a, _ in self.aliases]


_BINARY = ("0", "1")
TASKS: dict[str, TaskSpec] = {
    "xnli": TaskSpec(
        "xnli", "seq_cls",
        ("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
        ("contradiction", "entailment", "neutral"), "acc", "XNLI",
        aliases=(("contradictory", "contradiction"),),
    ),
    "pawsx": TaskSpec(
        "pawsx", "seq_cls", ("en", "de", "es", "fr", "ja", "ko", "zh"), _BINARY, "acc", "PAWSX",
        aliases=(("different", "0"), ("same", "1")),
    ),
    "nc": TaskSpec("nc", "seq_cls", ("en", "de", "es", "fr", "ru"), NC_CATEGORIES, "acc", "NC"),
    "qam": TaskSpec(
        "qam", "seq_cls", ("en", "de", "fr"), _BINARY, "acc", "QAM",
        aliases=(("False", "0"), ("True", "1")),
    ),
    "qadsm": TaskSpec(
        "qadsm", "seq_cls", ("en", "de", "fr"), ("Bad", "Good"), "acc", "QADSM",
        aliases=(("0", "Bad"), ("1", "Good")),
    ),
    "wpr": TaskSpec(
        "wpr", "rank", ("en", "de", "es", "fr", "it", "pt", "zh"), ("0", "1", "2", "3", "4"), "ndcg", "WPR",
        aliases=(("Bad", "0"), ("Fair", "1"), ("Good", "2"), ("Excellent", "3"), ("Perfect", "4")),
    ),
    "ner": TaskSpec("ner", "token_cls", ("en", "de", "es", "nl"), NER_TAGS, "f1", "NER"),
    "pos": TaskSpec(
        "pos", "token_cls",
        ("en", "ar", "bg", "de", "el", "es", "fr", "hi", "it", "nl", "pl", "pt", "ru", "th", "tr", "ur", "vi",
         "zh"),
        UPOS_TAGS, "acc", "POS",
    ),
}

# SIB-200 (sdq.data.sib200): Flores-200 codes; the embedded subset's languages, or every language
# folder of a full SIB-200 data.root (English train, zero-shot to the rest).
TASKS["sib200"] = TaskSpec("sib200", "seq_cls", SUBSET_LANGUAGES, SIB200_LABELS, "acc", "", open_languages=True)

HUB_CONFIGS = {"xnli": "xnli", "pawsx": "paws-x", "nc": "nc", "qam": "qam", "qadsm": "qadsm",
               "wpr": "wpr", "ner": "ner", "pos": "pos"}


def get_task(name: str) -> TaskSpec:
    """The spec of an XGLUE task by name (case-insensitive; ``paws-x`` accepted for ``pawsx``)."""
    key = str(name).lower().replace("-", "")
    if key not in TASKS:
        raise SdqConfigError(
            f"task {name!r} is not an XGLUE understanding task; use one of: {', '.join(TASKS)}"
        )
    return TASKS[key]
