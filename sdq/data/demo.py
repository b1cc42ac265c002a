"""Embedded offline demo task: chatterbot-corpus question/answer pairs as a QAM-format task.

Label 1 = the true (question, answer) pair, 0 = the same question with an answer of another
question of the same language and split (one negative per positive: balanced). English is split
by question into train/dev/test (80/10/10); other languages by question into dev/test (50/50).
Files go to ``${SDQ_CACHE:-~/.cache/sdq}/demo_xglue/QAM/xglue.qam.<lang>.<split>``, written
atomically, so the normal reader (``read_split(root, "demo", lang, split)``) loads them.

>>> root = ensure_demo()          # built once (about a second), then reused
>>> demo_sizes(root)["en/train"]  # number of examples
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from sdq.errors import SdqDataError

SEED = 1234
VERSION = 1
MIN_PAIRS = 30  # languages with fewer unique pairs are skipped (too small to split)
# chatterbot-corpus folder -> ISO 639-1 code (hinglish has none and is not used)
FOLDER_TO_ISO = {
    "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "indonesian": "id", "italian": "it", "japanese": "ja", "korean": "ko",
    "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru", "spanish": "es",
    "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh-tw",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}


def corpus_dir() -> Path:
    """The installed chatterbot_corpus/data folder."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise SdqDataError("the demo task needs chatterbot-corpus: pip install chatterbot-corpus==1.3.3 "
                           "(or pass data.root=<xglue_full_dataset dir> with a real task)") from None
    return Path(chatterbot_corpus.__file__).parent / "data"


def _clean(x: object) -> str:
    return " ".join(str(x).split()) if x is not None else ""


def load_pairs(folder: Path) -> list[tuple[str, str]]:
    """Unique (question, answer) pairs of one language: consecutive statements of each conversation."""
    import yaml

    pairs: dict[tuple[str, str], None] = {}
    for f in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list):
                continue
            turns = [_clean(t) for t in conv]
            for q, a in itertools.pairwise(turns):
                if q and a:
                    pairs[(q, a)] = None
    return list(pairs)


def _split_by_question(pairs: list[tuple[str, str]], fractions: dict[str, float], rng: random.Random
                       ) -> dict[str, list[tuple[str, str]]]:
    by_q: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for q, a in pairs:
        by_q[q].append((q, a))
    questions = sorted(by_q)
    rng.shuffle(questions)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(questions) if i == len(names) - 1 else start + round(fractions[name] * len(questions))
        out[name] = [p for q in questions[start:end] for p in by_q[q]]
        start = end
    return out


def make_examples(pairs: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str, int]]:
    """One positive and one negative (answer of a different question, not a true answer) per pair."""
    answers_of: dict[str, set[str]] = defaultdict(set)
    for q, a in pairs:
        answers_of[q].add(a)
    examples = []
    for q, a in pairs:
        examples.append((q, a, 1))
        for _ in range(100):
            q2, a2 = pairs[rng.randrange(len(pairs))]
            if q2 != q and a2 not in answers_of[q]:
                examples.append((q, a2, 0))
                break
        else:
            examples.pop()  # no valid negative: drop the positive too, to stay balanced
    rng.shuffle(examples)
    return examples


def build_demo(root: Path, seed: int = SEED) -> dict[str, int]:
    """Write every split of every usable language under ``root``; returns sizes {'en/train': n, ...}."""
    sizes: dict[str, int] = {}
    qam = root / "QAM"
    qam.mkdir(parents=True, exist_ok=True)
    for folder in sorted(corpus_dir().iterdir()):
        lang = FOLDER_TO_ISO.get(folder.name)
        if lang is None or not folder.is_dir():
            continue
        pairs = load_pairs(folder)
        if len(pairs) < MIN_PAIRS:
            continue
        rng = random.Random(f"{seed}-{lang}")
        fractions = {"train": 0.8, "dev": 0.1, "test": 0.1} if lang == "en" else {"dev": 0.5, "test": 0.5}
        for split, part in _split_by_question(pairs, fractions, rng).items():
            rows = make_examples(part, rng)
            text = "".join(f"{q}\t{a}\t{y}\n" for q, a, y in rows)
            (qam / f"xglue.qam.{lang}.{split}").write_text(text, encoding="utf-8")
            sizes[f"{lang}/{split}"] = len(rows)
    (root / "manifest.json").write_text(json.dumps({"version": VERSION, "seed": seed, "sizes": sizes},
                                                   indent=1), encoding="utf-8")
    return sizes


def default_cache_dir() -> Path:
    return Path(os.environ.get("SDQ_CACHE") or Path.home() / ".cache" / "sdq")


def ensure_demo(cache_dir: str | Path | None = None) -> Path:
    """The demo dataset root (``<cache>/demo_xglue``), built atomically on first use."""
    root = Path(cache_dir or default_cache_dir()) / "demo_xglue"
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("version") == VERSION:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo_xglue.", dir=root.parent))
    try:
        build_demo(tmp)
        if root.exists():  # stale version: replace it
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not manifest.is_file():  # nobody else finished it either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_sizes(root: str | Path) -> dict[str, int]:
    """Examples per ``lang/split`` as recorded when the demo was built."""
    return json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))["sizes"]


def demo_languages(root: str | Path) -> list[str]:
    """Languages with dev files in a built demo, English first."""
    langs = sorted({k.split("/")[0] for k in demo_sizes(root)})
    return sorted(langs, key=lambda x: (x != "en", x))
