"""SIB-200 topic classification (7 labels, Flores-200 sentences in 205 language varieties).

A SIB-200 folder holds one sub-folder per language variety (Flores code, e.g. ``eng_Latn``) with
``train.tsv`` / ``dev.tsv`` / ``test.tsv`` (a ``.tsv.gz`` may stand in for each), tab-separated with the
header ``index_id  category  text``. The package ships a subset (:func:`subset_dir`: English train/dev,
the test split of the :data:`SUBSET_LANGUAGES`); :func:`make_subset` rebuilds it from a full copy.

>>> discover_languages(subset_dir(), "test")[:3]
['eng_Latn', 'amh_Ethi', 'arb_Arab']
>>> read_rows(split_file(subset_dir(), "eng_Latn", "dev"))[0]["label"]   # index into LABELS
>>> make_subset("/data/sib200", "/tmp/sib200_subset")   # or: python -m sdq.data.sib200 SRC DST
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import sys
from pathlib import Path

from sdq.errors import SdqDataError, SdqError

TRAIN_LANGUAGE = "eng_Latn"
SPLITS = ("train", "dev", "test")
# The order of the SIB-200 paper and dataset card.
LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
COLUMNS = ("index_id", "category", "text")
# Shipped test languages: the 15 XNLI languages, then 35 more across scripts and resource levels,
# all represented by the XLM-R sentencepiece vocabulary (no <unk> on the test split).
XNLI_VARIETIES = (
    "eng_Latn", "arb_Arab", "bul_Cyrl", "deu_Latn", "ell_Grek", "spa_Latn", "fra_Latn", "hin_Deva",
    "rus_Cyrl", "swh_Latn", "tha_Thai", "tur_Latn", "urd_Arab", "vie_Latn", "zho_Hans",
)  # fmt: skip
_MORE = (
    # scripts: Bengali, Japanese, Korean, Hebrew, Ethiopic, Georgian, Armenian, Tamil, Telugu, Malayalam,
    # Gujarati, Gurmukhi, Sinhala, Khmer, Lao, Myanmar, traditional Chinese, Cyrillic, Perso-Arabic
    "ben_Beng", "jpn_Jpan", "kor_Hang", "heb_Hebr", "amh_Ethi", "kat_Geor", "hye_Armn", "tam_Taml",
    "tel_Telu", "mal_Mlym", "guj_Gujr", "pan_Guru", "sin_Sinh", "khm_Khmr", "lao_Laoo", "mya_Mymr",
    "zho_Hant", "ukr_Cyrl", "pes_Arab",
    # high-resource Latin
    "ita_Latn", "por_Latn", "nld_Latn", "pol_Latn", "fin_Latn", "ind_Latn",
    # low-resource in XLM-R's pre-training data
    "hau_Latn", "som_Latn", "xho_Latn", "gaz_Latn", "cym_Latn", "gla_Latn", "jav_Latn", "plt_Latn",
    "uig_Arab", "ydd_Hebr",
)  # fmt: skip


def _english_first(langs) -> tuple[str, ...]:
    return tuple(sorted(set(langs), key=lambda x: (x != TRAIN_LANGUAGE, x)))


SUBSET_LANGUAGES = _english_first(XNLI_VARIETIES + _MORE)


def subset_dir() -> Path:
    """The SIB-200 subset shipped inside the package."""
    return Path(__file__).resolve().parent / "sib200_subset"


def split_file(root: str | Path, lang: str, split: str) -> Path:
    """``<root>/<lang>/<split>.tsv``, or its ``.tsv.gz`` when only that exists."""
    plain = Path(root) / lang / f"{split}.tsv"
    gz = plain.with_name(plain.name + ".gz")
    return gz if not plain.is_file() and gz.is_file() else plain


def discover_languages(root: str | Path, split: str) -> list[str]:
    """Language folders under ``root`` that have a ``split`` file; English first, then by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return list(_english_first(d.name for d in root.iterdir()
                               if d.is_dir() and split_file(root, d.name, split).is_file()))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data.decode("utf-8-sig")
    except FileNotFoundError:
        raise SdqDataError(f"{path}: missing SIB-200 file; point data.root at a SIB-200 folder (one folder "
                           "per language with train.tsv, dev.tsv, test.tsv) or pick languages that exist there"
                           ) from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SdqDataError(f"{path}: unreadable ({type(e).__name__}); re-download or re-extract SIB-200") from None


def read_rows(path: str | Path) -> list[dict]:
    """Examples of one SIB-200 file: ``{"text", "text_pair": None, "label", "group": None, "index_id"}``."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise SdqDataError(f"{path}: file is empty; re-download or re-extract SIB-200")
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    header = next(reader)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SdqDataError(f"{path}:1: header lacks column(s) {', '.join(missing)}; "
                           f"the first line must name the columns {' '.join(COLUMNS)} (tab-separated)")
    idx = {c: header.index(c) for c in COLUMNS}
    rows: list[dict] = []
    for f in reader:
        lineno = reader.line_num
        if not any(x.strip() for x in f):
            continue
        if len(f) != len(header):
            raise SdqDataError(f"{path}:{lineno}: {len(f)} tab-separated fields, expected {len(header)}; "
                               "fix or delete the line")
        raw = f[idx["category"]].strip()
        if raw not in LABELS:
            raise SdqDataError(f"{path}:{lineno}: label {raw!r} is not a sib200 label; "
                               f"fix the line (labels: {', '.join(LABELS)})")
        rows.append({"text": f[idx["text"]], "text_pair": None, "label": LABELS.index(raw), "group": None,
                     "index_id": f[idx["index_id"]]})
    if not rows:
        raise SdqDataError(f"{path}: no examples after the header; re-download or re-extract SIB-200")
    return rows


def _write_gz(src: Path, dst: Path) -> int:
    """Gzip ``src`` to ``dst`` reproducibly (no name, mtime 0); returns the bytes written."""
    read_rows(src)  # refuse to ship a malformed file
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as z:
        z.write(src.read_bytes())
    return dst.stat().st_size


def make_subset(src: str | Path, dst: str | Path, languages=SUBSET_LANGUAGES) -> dict[str, int]:
    """Copy English train/dev and the test split of ``languages`` from a full SIB-200 folder ``src`` to
    ``dst`` as ``<lang>/<split>.tsv.gz``, with the subset's README.md and LICENSE; returns bytes per file.

    >>> make_subset("/data/sib200", "sdq/data/sib200_subset")["eng_Latn/train.tsv.gz"]
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise SdqDataError(f"{src}: not a folder; point at a full SIB-200 folder (one folder per language)")
    languages = _english_first([TRAIN_LANGUAGE, *languages])
    missing = [lang for lang in languages if not split_file(src, lang, "test").is_file()]
    if missing:
        raise SdqDataError(f"{src}: no test.tsv for {', '.join(missing)}; point at a full SIB-200 folder")
    sizes: dict[str, int] = {}
    for lang in languages:
        for split in SPLITS if lang == TRAIN_LANGUAGE else ("test",):
            sizes[f"{lang}/{split}.tsv.gz"] = _write_gz(split_file(src, lang, split),
                                                        dst / lang / f"{split}.tsv.gz")
    here = subset_dir()
    if dst.resolve() != here:
        for name in ("README.md", "LICENSE"):
            shutil.copyfile(here / name, dst / name)
    return sizes


def main(argv: list[str] | None = None) -> int:
    """``python -m sdq.data.sib200 SRC [DST]``: rebuild the subset (DST defaults to the package's)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m sdq.data.sib200 SRC [DST]", file=sys.stderr)
        return 2
    try:
        sizes = make_subset(args[0], args[1] if len(args) == 2 else subset_dir())
    except SdqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(sizes)} files, {sum(sizes.values())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
