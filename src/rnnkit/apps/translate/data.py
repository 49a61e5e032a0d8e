"""Parallel text for translation: reading pairs, building corpora, and padded batches.

    a TSV file (source<TAB>target a line) | two aligned files | a folder of train/valid/test.tsv
    `gettext_corpus`: English -> French/German/Spanish from the message catalogs Debian installs
    `number_corpus`: English number words -> German ones (num2words), small and fast to learn

Splits are made by a hash of the source side, so that one English sentence never lands in two
splits (catalogs repeat strings: "Open File" in twenty programs). Batches hold pairs of similar
length (bucketing), padded, with their lengths.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import RnnkitError
from ...io import atomic_write

Pair = tuple[str, str]  # (source sentence, target sentence)
SPLITS = ("train", "valid", "test")
LOCALE_DIR = Path("/usr/share/locale")
GETTEXT_LANGUAGES = ("fr", "de", "es")
MIN_GETTEXT_PAIRS = 5000  # fewer: too little to learn a language from (the demo falls back to numbers)
# Debian packages whose catalogs add many translated messages (`apt-get install` them for more pairs)
MORE_CATALOGS = ("gimp", "inkscape", "gnome-control-center", "evolution", "vim", "util-linux-locales", "gcc-12-locales",
                 "tar", "wget")


# --------------------------------------------------------------------- reading parallel text

def _lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 file; RnnkitError naming the file (and line) if it is missing, binary,
    not UTF-8 or empty."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise RnnkitError(f"{what} {path} is a folder, not a file") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise RnnkitError(f"{path} looks like a binary file (NUL byte at byte offset {nul}), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RnnkitError(f"{path}:{line}: not UTF-8 text (invalid byte 0x{data[e.start]:02x})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise RnnkitError(f"{path} is empty: it holds no sentence pairs")
    return lines


def read_tsv(path: str | Path) -> list[Pair]:
    """Pairs from a file of `source<TAB>target` lines (blank lines skipped); RnnkitError naming the
    file and line of a line without a tab or with an empty side."""
    path = Path(path)
    pairs = []
    for n, line in enumerate(_lines(path, "parallel text"), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise RnnkitError(f"{path}:{n}: no tab between source and target (expected source<TAB>target)")
        source, target = (side.strip() for side in line.split("\t", 1))
        if not source or not target:
            raise RnnkitError(f"{path}:{n}: the {'source' if not source else 'target'} side is empty")
        if "\t" in target:
            raise RnnkitError(f"{path}:{n}: more than one tab (expected source<TAB>target)")
        pairs.append((source, target))
    return pairs


def read_aligned(source: str | Path, target: str | Path) -> list[Pair]:
    """Pairs from two files whose n-th lines translate each other."""
    source, target = Path(source), Path(target)
    left, right = _lines(source, "source text"), _lines(target, "target text")
    if len(left) != len(right):
        raise RnnkitError(f"{source} has {len(left)} lines but {target} has {len(right)}: aligned files need as many")
    pairs = []
    for n, (s, t) in enumerate(zip(left, right), 1):
        s, t = s.strip(), t.strip()
        if not s and not t:
            continue
        if not s or not t:
            raise RnnkitError(f"{source if not s else target}:{n}: an empty line whose translation is not empty")
        pairs.append((s, t))
    return pairs


def bucket(text: str, parts: int = 100) -> int:
    """A stable number in [0, parts) from the text: which split a pair goes to."""
    return int.from_bytes(hashlib.sha1(text.strip().lower().encode("utf-8")).digest()[:8], "big") % parts


def split_pairs(pairs: Iterable[Pair], valid: int = 5, test: int = 5) -> dict[str, list[Pair]]:
    """train/valid/test by a hash of the source side: `valid` and `test` percent."""
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        b = bucket(pair[0])
        splits["test" if b < test else "valid" if b < test + valid else "train"].append(pair)
    return splits


def load_pairs(data: str | Path, target: str | Path | None = None) -> dict[str, list[Pair]]:
    """The train/valid/test pairs of `data`: a folder with train.tsv (and valid.tsv, test.tsv), a
    TSV file, or with `target` a source file aligned with it. A split that is not given is carved
    off the training pairs by hash (5% each)."""
    data = Path(data)
    if target is not None:
        return split_pairs(read_aligned(data, target))
    if data.is_dir():
        if not (data / "train.tsv").exists():
            raise RnnkitError(f"{data} has no train.tsv (a folder of parallel text holds train.tsv, valid.tsv, test.tsv)")
        given = {name: read_tsv(data / f"{name}.tsv") for name in SPLITS if (data / f"{name}.tsv").exists()}
        if len(given) == 3:
            return given
        carved = split_pairs(given["train"])
        return {name: given.get(name, carved[name]) for name in SPLITS} | {"train": carved["train"]}
    return split_pairs(read_tsv(data))


def write_tsv(path: Path, pairs: Sequence[Pair]) -> None:
    with atomic_write(path, "w") as f:
        f.writelines(f"{s}\t{t}\n" for s, t in pairs)


def write_splits(out: Path, splits: dict[str, list[Pair]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        write_tsv(out / f"{name}.tsv", pairs)


# --------------------------------------------------------------------- gettext catalogs

def read_mo(path: str | Path) -> dict[str, str]:
    """The translations in a compiled gettext catalog (.mo): msgid -> msgstr, singular forms of
    plural entries, contexts dropped; the header entry left out. RnnkitError if it is not one.

    Layout (GNU gettext manual, "The Format of GNU MO Files"): a magic number giving the byte order,
    the revision, N, and the offsets of two tables of N (length, offset) pairs, originals then
    translations; strings are NUL-terminated, plural forms separated by NUL.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 28:
        raise RnnkitError(f"{path} is not a gettext catalog (too short)")
    for order in "<>":
        if struct.unpack(order + "I", data[:4])[0] == 0x950412DE:
            break
    else:
        raise RnnkitError(f"{path} is not a gettext catalog (no .mo magic number)")
    _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        if offset + length > len(data):
            raise RnnkitError(f"{path} is a damaged gettext catalog (a string runs past its end)")
        return data[offset : offset + length]

    if originals + 8 * count > len(data) or translations + 8 * count > len(data):
        raise RnnkitError(f"{path} is a damaged gettext catalog (its tables run past its end)")
    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    header = next((t for o, t in raw if o == b""), b"").decode("ascii", "replace")
    found = re.search(r"charset=([\w-]+)", header)
    charset = found.group(1) if found else "utf-8"
    catalog = {}
    for original, translation in raw:
        if not original:
            continue
        try:
            msgid = original.decode(charset).split("\x04")[-1].split("\0")[0]
            msgstr = translation.decode(charset).split("\0")[0]
        except (UnicodeDecodeError, LookupError):
            continue
        if msgstr:
            catalog[msgid] = msgstr
    return catalog


_FORMAT = re.compile(r"%[-+ #0-9.*]*[a-zA-Z%]|%\(\w+\)|\{[^}]*\}|\$\{?\w+|\\[a-z]")  # %s, %(name)s, {0}, $HOME, \n
_MARKUP = re.compile(r"<[^>]+>|&\w+;|&#\d+;")
_ACCELERATOR = re.compile(r"_(?=\w)|&(?=\w)|~(?=\w)")  # _Open (GTK), &File (Qt), ~Save (LibreOffice)
_ACCEL_SUFFIX = re.compile(r"\s*\(_?\w\)$")  # "Ouvrir (_O)": the key of translations that keep the English one
_WORD = re.compile(r"\w", re.UNICODE)


def clean_message(text: str) -> str | None:
    """A catalog message as a sentence, or None where it is not one to learn from: format
    specifiers, markup, several lines, or no letters."""
    if (_FORMAT.search(text) or _MARKUP.search(text) or "\n" in text or "\t" in text or "|" in text
            or text.count("_") > 1):  # several underscores: identifiers (max_wal_senders), not one accelerator
        return None
    text = _ACCEL_SUFFIX.sub("", _ACCELERATOR.sub("", text))
    text = " ".join(text.replace("\u00a0", " ").replace("\u202f", " ").split())  # French puts narrow spaces before ":"
    if not text or not _WORD.search(text) or text.startswith("-") or "@" in text:
        return None
    return text


def gettext_pairs(lang: str, locale_dir: Path = LOCALE_DIR, min_words: int = 2, max_words: int = 12
                  ) -> tuple[list[Pair], list[Path]]:
    """English -> `lang` pairs from every catalog in locale_dir/<lang>/LC_MESSAGES, and the catalogs
    read. Kept: both sides of 2-12 words (the target up to 1.5 x 12), cleaned (`clean_message`),
    translated (not the English again); an English sentence translated differently by several
    programs keeps its commonest translation."""
    folder = locale_dir / lang / "LC_MESSAGES"
    catalogs = sorted(folder.glob("*.mo")) if folder.is_dir() else []
    seen: dict[str, Counter[str]] = {}
    for path in catalogs:
        try:
            catalog = read_mo(path)
        except (RnnkitError, OSError, struct.error):
            continue  # a damaged catalog among many: the others still count
        for msgid, msgstr in catalog.items():
            source, target = clean_message(msgid), clean_message(msgstr)
            if source is None or target is None or source == target:
                continue
            if not min_words <= len(source.split()) <= max_words or not 1 <= len(target.split()) <= max_words * 3 // 2:
                continue
            seen.setdefault(source, Counter())[target] += 1
    pairs = [(source, min(counts.items(), key=lambda c: (-c[1], c[0]))[0]) for source, counts in sorted(seen.items())]
    return pairs, catalogs


def more_catalogs_hint() -> str:
    """Debian packages whose catalogs (in every language they are translated to) add pairs."""
    return "apt-get install " + " ".join(MORE_CATALOGS)


def gettext_corpus(lang: str, out: str | Path, locale_dir: Path = LOCALE_DIR) -> dict[str, int]:
    """Write the English -> `lang` corpus of the catalogs installed here to OUT/{train,valid,test}.tsv;
    return the number of pairs of each split and the catalogs read. RnnkitError if none is found."""
    if lang not in GETTEXT_LANGUAGES:
        raise RnnkitError(f"unknown language {lang!r} for the gettext corpus: expected {', '.join(GETTEXT_LANGUAGES)}")
    pairs, catalogs = gettext_pairs(lang, Path(locale_dir))
    if not pairs:
        raise RnnkitError(f"no {lang} message catalogs with usable translations in "
                          f"{Path(locale_dir) / lang / 'LC_MESSAGES'}; Debian packages bring them, e.g. "
                          f"{more_catalogs_hint()}")
    splits = split_pairs(pairs)
    write_splits(Path(out), splits)
    return {"catalogs": len(catalogs), **{name: len(p) for name, p in splits.items()}}


# --------------------------------------------------------------------- numbers (num2words)

def number_pairs(count: int = 3000, lang: str = "de") -> list[Pair]:
    """English -> `lang` words of the numbers 0 .. count-1: "twenty-four" -> "vierundzwanzig"."""
    try:
        from num2words import num2words
    except ImportError:
        raise RnnkitError("the number corpus needs num2words: pip install num2words") from None
    try:
        return [(num2words(n, lang="en"), num2words(n, lang=lang)) for n in range(count)]
    except NotImplementedError:
        raise RnnkitError(f"num2words has no language {lang!r}") from None


def number_corpus(out: str | Path, count: int = 3000, lang: str = "de") -> dict[str, int]:
    """OUT/{train,valid,test}.tsv of number words, split by hash: the test numbers are never seen."""
    splits = split_pairs(number_pairs(count, lang), valid=5, test=10)
    write_splits(Path(out), splits)
    return {name: len(p) for name, p in splits.items()}


# --------------------------------------------------------------------- batches

@dataclass(frozen=True)
class Batch:
    """Padded pairs: source (S, B) and target (T + 1, B) ids, with the target framed by the
    start/end token at both ends, so that decoder input = target[:-1] and output = target[1:]."""

    source: Tensor  # (S, B), padded with 0 after source_lengths
    source_lengths: Tensor  # (B,)
    target: Tensor  # (T + 1, B), padded with PAD after each sentence's final end token
    tokens: int  # target tokens predicted (padding not counted)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.source.to(device), self.source_lengths.to(device), self.target.to(device), self.tokens)


PAD = -100  # the target's padding: cross_entropy's ignore_index


def collate(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], eos: int) -> Batch:
    """Pad a list of encoded pairs into a Batch (sources padded with 0, which their lengths mask;
    the end token also starts the target, as the language model's line end starts a line)."""
    S, T = max(map(len, sources)), max(map(len, targets)) + 2
    source = torch.zeros(S, len(sources), dtype=torch.long)
    target = torch.full((T, len(targets)), PAD, dtype=torch.long)
    for b, (s, t) in enumerate(zip(sources, targets)):
        source[: len(s), b] = torch.tensor(s, dtype=torch.long)
        target[: len(t) + 2, b] = torch.tensor([eos, *t, eos], dtype=torch.long)
    return Batch(source, torch.tensor([len(s) for s in sources]), target, sum(len(t) + 1 for t in targets))


def bucketed(lengths: Sequence[tuple[int, int]], batch_size: int, seed: int) -> list[list[int]]:
    """Indices of pairs in batches of `batch_size` pairs of similar lengths: sorted by (target,
    source) length, ties broken at random, and cut in order, so that little of a batch is padding."""
    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][1], lengths[i][0], rng.random()))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
