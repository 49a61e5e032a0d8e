"""Reading text files in bounded memory.

A source is a file or a folder of `.txt` files. Text is read as UTF-8 in blocks of about 1 MiB,
each block cut at a line end (or, in a very long line, at a space), so that a tokenizer never sees
a word split across two blocks and a corpus larger than memory can stream through:

    file bytes:  |the cat sat\non the mat\nand then | it slept\n ...
    blocks:      |the cat sat\non the mat\n|and then it slept\n| ...     (the tail waits for more)

Every file reads as if it ended with a line end, so files never run into one another. Windows line
ends (CRLF) read as "\\n". A NUL byte or bytes that are not UTF-8 raise `RnnkitError` naming the file
and the byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..errors import RnnkitError

BLOCK_BYTES = 1 << 20
# a line longer than this is cut at a space (or, failing that, between two characters)
LONG_LINE_BYTES = 16 << 20
_SPACES = (b" ", b"\t")


class Segment(NamedTuple):
    """The bytes [start, end) of one file; `end` equal to the file size means up to its end."""

    path: Path
    start: int
    end: int


def text_files(source: str | os.PathLike[str], what: str = "text") -> list[Path]:
    """The files of a source: the file itself, or a folder's `.txt` files (recursively, sorted by
    path). Empty files in a folder are skipped; a missing path, an empty file or a folder with no
    text raise `RnnkitError` (`what` names the source in the message, e.g. "validation text")."""
    path = Path(source)
    if not path.exists():
        raise RnnkitError(f"{what} not found: {path}")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.as_posix())
        if not files:
            raise RnnkitError(f"{what} folder {path} has no .txt files")
        files = [p for p in files if p.stat().st_size > 0]
        if not files:
            raise RnnkitError(f"{what} folder {path} has only empty .txt files")
        return files
    if not path.is_file():
        raise RnnkitError(f"{what} is neither a file nor a folder: {path}")
    if path.stat().st_size == 0:
        raise RnnkitError(f"{what} file is empty: {path}")
    return [path]


def whole(files: Iterable[Path]) -> list[Segment]:
    return [Segment(p, 0, p.stat().st_size) for p in files]


def split_point(path: Path, offset: int, window: int = 64 << 10) -> int:
    """A byte offset at or just before `offset` in `path` where a split may begin: just after the
    last line end within `window` bytes, else at the last space there (a text with no line breaks,
    like text8), else at a character boundary."""
    lo = max(0, offset - window)
    with open(path, "rb") as f:
        f.seek(lo)
        data = f.read(offset - lo + 1)
    before = data[: offset - lo]
    newline = before.rfind(b"\n")
    if newline >= 0:
        return lo + newline + 1
    space = max(before.rfind(s) for s in _SPACES)
    if space >= 0:
        return lo + space
    # no place between words: back up over UTF-8 continuation bytes (10xxxxxx)
    i = offset - lo
    while 0 < i < len(data) and data[i] & 0xC0 == 0x80:
        i -= 1
    return lo + i


def read_blocks(segments: Iterable[Segment], block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """The text of the segments, in blocks that each end at a line end or before a space (or,
    inside an enormous word, between characters). A segment that reaches the end of its file ends
    with "\\n" even where the file does not."""
    for path, start, end in segments:
        at_file_end = end >= path.stat().st_size
        with open(path, "rb") as f:
            f.seek(start)
            pending, offset = b"", start  # offset: the file position of pending[0]
            while True:
                chunk = f.read(min(block_bytes, end - offset - len(pending)))
                nul = chunk.find(b"\0")  # before decoding: a binary file is named as one
                if nul >= 0:
                    at = offset + len(pending) + nul
                    raise RnnkitError(f"{path} looks like a binary file (NUL byte at byte offset {at}), not text")
                data = pending + chunk
                if not chunk:  # the segment is done
                    if data:
                        text = _decode(data, path, offset)
                        yield text if (text.endswith("\n") or not at_file_end) else text + "\n"
                    break
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) >= LONG_LINE_BYTES:
                    cut = _cut_long_line(data)
                if cut == 0:
                    pending = data
                    continue
                yield _decode(data[:cut], path, offset)
                pending, offset = data[cut:], offset + cut


def _cut_long_line(data: bytes) -> int:
    space = max(data.rfind(s) for s in _SPACES)
    if space > 0:
        return space
    i = len(data) - 1
    while i > 0 and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RnnkitError(
            f"{path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset {offset + e.start}"
        ) from None
    return text.replace("\r\n", "\n")
