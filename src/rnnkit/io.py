"""Files in and out, for every layer: atomic writes, JSON and CSV, PNG figures, safetensors.

Every write goes to a temp file beside its target, is fsynced and renamed over it, so a reader (or
a crash) sees the old file or the new one, never half of one. Every read of a file the user or an
earlier run made turns "missing" and "damaged" into an `RnnkitError` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor

from .errors import RnnkitError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`, so readers
    see the old file or the new one, never half of one. On an error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not every platform can open a folder
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_json(path: PathLike, obj: Any) -> Path:
    """`obj` as indented UTF-8 JSON, atomically."""
    return write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: PathLike, what: str) -> Any:
    """The JSON value in `path`; `what` names the file in the error when it is missing or damaged
    (e.g. "the model's config.json")."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise RnnkitError(f"{what} is a folder, not a file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RnnkitError(f"{what} is damaged ({path}): {e}") from None


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it; a crash can at worst cut the last line, which readers skip."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line of a JSON-lines file; RnnkitError naming
    `what` when the file is missing, and the file and line where it is not UTF-8 or not JSON."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise RnnkitError(f"{path} is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise RnnkitError(f"{path}:{n}: not a JSON object ({e.msg})") from None


def write_csv(path: PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_bytes(path, text.getvalue().encode("utf-8"))


def save_figure(path: PathLike, fig: Figure, dpi: int = 80) -> Path:
    """A matplotlib Figure as PNG (rendered with Agg by `savefig`, no pyplot state touched)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_bytes(path, buffer.getvalue())


def write_tensors(path: PathLike, tensors: dict[str, Tensor]) -> None:
    """Named tensors as one safetensors file (contiguous CPU copies), atomically."""
    with atomic_write(path) as f:
        f.write(st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def read_tensors(path: PathLike, what: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file (read through safetensors' own file API, so the file is
    never in memory twice); `what` names it in the error when missing or damaged."""
    path = Path(path)
    try:
        return load_file(path)
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise RnnkitError(f"{what} is damaged ({path}): {e}") from None


def tensor_shapes(path: PathLike, what: str) -> dict[str, tuple[int, ...]]:
    """The names and shapes in a safetensors file's header, read without its tensors."""
    path = Path(path)
    try:
        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise RnnkitError(f"{what} not found: {path}") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise RnnkitError(f"{what} is damaged ({path}): {e}") from None
