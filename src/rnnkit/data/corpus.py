"""Corpus: text files -> token ids on disk, written in one streaming pass, read as numpy memmaps.

    train source (a file or a folder of .txt files)        valid, test sources (optional)
        |  a split not given is carved off the end of the training text:
        v
    [ train ............................ | valid (5%) | test (5%) ]      (by bytes, cut at line ends)
        -> tokenizer trained on the train part only (unless one is given)
        -> DIR/train.bin  DIR/valid.bin  DIR/test.bin   the ids, little-endian uint16 (V <= 65536)
                                                        or uint32, nothing else in the file
        -> DIR/corpus.json                              what the .bin files hold (written last)

The carve is deterministic: each held-out part starts just after the last line end at or before
its mark, 90% and 95% of the training text's bytes (95% when only one is carved); a text without
line breaks there, like text8, is cut at a space. Only one block of text (~1 MiB) and its ids are
in memory at a time, so a corpus larger than memory can be built and then trained on through the
memmaps (measured: ~30 MB of growth for a 200 MB corpus, word or char).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RnnkitError
from ..io import atomic_write, read_json, write_json
from .files import Segment, read_blocks, split_point, text_files, whole
from .tokenizers import Tokenizer, train_tokenizer_from_text

SPLITS = ("train", "valid", "test")
FORMAT, VERSION = "rnnkit-corpus", 1
HOLDOUT = 0.05

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Corpus:
    """The token ids of the three splits, each a read-only 1-D np.memmap of shape (N,), and the
    tokenizer that made them."""

    tokenizer: Tokenizer
    train: np.memmap = field(repr=False)
    valid: np.memmap = field(repr=False)
    test: np.memmap = field(repr=False)
    directory: Path


def plan_splits(
    train: PathLike, valid: PathLike | None = None, test: PathLike | None = None, holdout: float = HOLDOUT
) -> dict[str, list[Segment]]:
    """Which bytes of which files make each split. Each of valid and test that is not given takes
    `holdout` of the training text's bytes, carved off its end (valid before test)."""
    train_files = text_files(train, "training text")
    given = {"valid": valid, "test": test}
    plan = {name: whole(text_files(source, f"{name} text")) for name, source in given.items() if source is not None}
    carved = [name for name in ("valid", "test") if given[name] is None]
    if not carved:
        return {"train": whole(train_files), **plan}
    if not isinstance(holdout, (int, float)) or not 0 < holdout * len(carved) < 1:
        raise RnnkitError(f"holdout must be a fraction in (0, {1 / len(carved):g}), got {holdout!r}")

    sizes = [p.stat().st_size for p in train_files]
    starts = np.cumsum([0, *sizes]).tolist()  # starts[i]: where file i begins in the concatenation
    total = starts[-1]
    cuts: list[int] = []
    for k in range(len(carved), 0, -1):
        mark = int(total * (1 - holdout * k))
        i = bisect.bisect_right(starts, mark) - 1
        cut = starts[i] + split_point(train_files[i], mark - starts[i])
        cuts.append(max(cut, cuts[-1] if cuts else 0))
    bounds = [0, *cuts, total]
    parts = [_slice(train_files, starts, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    for name, part in zip(["train", *carved], parts, strict=True):
        if not part:
            for _ in read_blocks(whole(train_files)):
                pass  # text this small reads at once: report a binary file as one, not as small
            raise RnnkitError(
                f"the training text ({total} bytes) is too small to hold out a {name} split; give one explicitly"
            )
    return {"train": parts[0], **plan, **dict(zip(carved, parts[1:], strict=True))}


def _slice(files: list[Path], starts: list[int], a: int, b: int) -> list[Segment]:
    """The segments covering bytes [a, b) of the files' concatenation."""
    return [
        Segment(path, max(a, lo) - lo, min(b, hi) - lo)
        for path, lo, hi in zip(files, starts, starts[1:], strict=False)
        if max(a, lo) < min(b, hi)
    ]


def build_corpus(
    train: PathLike,
    valid: PathLike | None = None,
    test: PathLike | None = None,
    *,
    out_dir: PathLike,
    tokenizer: Tokenizer | str = "word",
    vocab_size: int | None = None,
    min_count: int = 1,
    holdout: float = HOLDOUT,
) -> Corpus:
    """Tokenize the text into `out_dir` (e.g. a model directory's `data/`) and open it.

    Arguments:
        train, valid, test: a file or a folder of .txt files each; see `plan_splits`.
        tokenizer: a Tokenizer to use as it is, or the kind ("char", "word", "bpe") of one to train
            on the train split with vocab_size and min_count (see `train_tokenizer`).
        holdout: the fraction of the training text carved off for each split not given.

    With a Tokenizer given, a corpus already in `out_dir` from the same sources (path, size, time
    of change) and the same tokenizer is opened as it is instead of being built again.
    """
    out_dir = Path(out_dir)
    plan = plan_splits(train, valid, test, holdout)
    sources = {name: [_describe(s) for s in segments] for name, segments in plan.items()}
    if isinstance(tokenizer, Tokenizer):
        try:
            meta = _read_meta(out_dir)
            if meta.get("sources") == sources and meta.get("tokenizer") == tokenizer.fingerprint():
                return open_corpus(out_dir, tokenizer)
        except RnnkitError:
            pass  # nothing reusable there: build it
    else:
        tokenizer = train_tokenizer_from_text(tokenizer, read_blocks(plan["train"]), vocab_size, min_count)

    dtype = _dtype(tokenizer)
    splits = {}
    # all three are written before any replaces its old file, so bad text (found only when read)
    # leaves the old corpus as it was; the description goes first and comes back last, so that a
    # crash part-way through cannot leave a mix that looks complete
    with contextlib.ExitStack() as stack:
        for name in SPLITS:
            f = stack.enter_context(atomic_write(out_dir / f"{name}.bin"))
            tokens = _write_ids(plan[name], tokenizer, f, dtype)
            if tokens == 0:
                raise RnnkitError(f"the {name} text has no tokens")
            if name != "train" and tokens < 2:  # evaluating predicts each token from the ones before
                raise RnnkitError(f"the {name} text has 1 token; evaluating it needs at least 2")
            splits[name] = {"file": f"{name}.bin", "tokens": tokens}
        (out_dir / "corpus.json").unlink(missing_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.str,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "tokenizer": tokenizer.fingerprint(),
        "splits": splits,
        "sources": sources,
    }
    write_json(out_dir / "corpus.json", meta)
    return open_corpus(out_dir, tokenizer)


def _dtype(tokenizer: Tokenizer) -> np.dtype:
    return np.dtype("<u2" if tokenizer.vocab_size <= 1 << 16 else "<u4")


def _write_ids(segments: list[Segment], tokenizer: Tokenizer, f: Any, dtype: np.dtype) -> int:
    """Encode the segments' text block by block into `f` as `dtype` ids; return how many."""
    tokens = 0
    for block in read_blocks(segments):
        ids = tokenizer.encode_array(block, add_eos=False)  # a block ends where a line ends
        f.write(ids.astype(dtype).tobytes())
        tokens += len(ids)
    return tokens


def encode_to_file(source: PathLike, tokenizer: Tokenizer, path: PathLike, what: str = "text") -> np.memmap:
    """The ids of a file or folder of .txt files, written to `path` in one streaming pass and
    opened as a read-only memmap (N,): text of any size in bounded memory."""
    with atomic_write(path) as f:
        tokens = _write_ids(whole(text_files(source, what)), tokenizer, f, dtype := _dtype(tokenizer))
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,)) if tokens else np.zeros(0, dtype=dtype)


def _describe(segment: Segment) -> dict[str, Any]:
    stat = segment.path.stat()
    return {
        "path": str(segment.path.resolve()),
        "start": segment.start,
        "end": segment.end,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / "corpus.json"
    meta = read_json(path, "the corpus description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise RnnkitError(f'{path} is not an rnnkit corpus description (expected "format": "{FORMAT}", v{VERSION})')
    return meta


def open_corpus(directory: PathLike, tokenizer: Tokenizer) -> Corpus:
    """Open a corpus that `build_corpus` wrote, checking that `tokenizer` is the one that made it."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta.get("tokenizer") != tokenizer.fingerprint():
        raise RnnkitError(f"the corpus in {directory} was made with another tokenizer; build it again")
    try:
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for name in SPLITS:
            info = meta["splits"][name]
            path, tokens = directory / info["file"], int(info["tokens"])
            if path.stat().st_size != tokens * dtype.itemsize:
                raise RnnkitError(f"{path} does not hold the {tokens} ids corpus.json says; build the corpus again")
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
    except (KeyError, TypeError, ValueError, OSError) as e:
        problem = f"{type(e).__name__}: {e}"
        raise RnnkitError(f"the corpus in {directory} is incomplete or damaged ({problem}); build it again") from None
    return Corpus(tokenizer=tokenizer, directory=directory, **arrays)

