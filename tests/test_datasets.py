"""The download registry against a local HTTP server (never the internet): verified installs,
resumed transfers, refused corruption, mirrors, archives, and the `rnnkit data get` command."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rnnkit import cli
from rnnkit.errors import RnnkitError
from rnnkit.data import datasets
from rnnkit.data.datasets import Dataset, RemoteFile

TRAIN = bytes(range(256)) * 64  # 16 KiB, several reads long
VALID = b"the cat sat on the mat\n" * 50


class _Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` support; a path in `server.cut` answers its next request with
    half the body and closes the connection."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and srv.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if srv.send_length:
            self.send_header("Content-Length", str(len(payload)))
        else:
            self.close_connection = True  # the body ends when the connection does
        self.end_headers()
        if self.path in srv.cut:
            srv.cut.discard(self.path)
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.ranges = True
        self.send_length = True
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _registry(server: _Server, train: bytes = TRAIN, digest: str | None = None) -> dict[str, Dataset]:
    server.files.update({"/tiny/train.txt": train, "/tiny/valid.txt": VALID})
    return {"tiny": Dataset("tiny", "a tiny corpus", (
        RemoteFile("train.txt", (server.url + "/tiny/train.txt",), digest or _sha(train), size=len(train)),
        RemoteFile("valid.txt", (server.url + "/tiny/valid.txt",), _sha(VALID)),  # size unknown
    ), {"train": "train.txt", "valid": "valid.txt"})}


def _one_line_error(capsys) -> str:
    """The error line: the last of stderr (progress bars come before it), and the only one."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("rnnkit: error: ") and sum("error" in line for line in lines) == 1, lines
    return lines[-1]


def test_download_installs_verified_files(server, tmp_path):
    folder = datasets.download("tiny", tmp_path, registry=_registry(server))
    assert folder == tmp_path / "tiny"
    assert (folder / "train.txt").read_bytes() == TRAIN
    assert (folder / "valid.txt").read_bytes() == VALID
    assert sorted(p.name for p in folder.iterdir()) == ["train.txt", "valid.txt"]
    assert datasets.split_paths("tiny", tmp_path, _registry(server)) == {
        "train": folder / "train.txt", "valid": folder / "valid.txt"}


def test_progress_reports_every_file_up_to_its_size(server, tmp_path):
    calls = []
    datasets.download("tiny", tmp_path, registry=_registry(server), progress=lambda *a: calls.append(a))
    assert calls[-1] == ("valid.txt", len(VALID), len(VALID))
    assert ("train.txt", len(TRAIN), len(TRAIN)) in calls


def test_file_in_place_with_right_checksum_is_not_downloaded_again(server, tmp_path):
    registry = _registry(server)
    datasets.download("tiny", tmp_path, registry=registry)
    server.requests.clear()
    datasets.download("tiny", tmp_path, registry=registry)
    assert server.requests == []


def test_cut_connection_resumes_with_a_range_request(server, tmp_path):
    registry = _registry(server)
    server.cut.add("/tiny/train.txt")
    datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == TRAIN
    train_requests = [r for p, r in server.requests if p == "/tiny/train.txt"]
    assert train_requests == [None, f"bytes={len(TRAIN) // 2}-"]


def test_truncated_part_file_is_resumed(server, tmp_path):
    registry = _registry(server)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "train.txt.part").write_bytes(TRAIN[:1000])
    datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == TRAIN
    assert ("/tiny/train.txt", "bytes=1000-") in server.requests
    assert not (tmp_path / "tiny" / "train.txt.part").exists()


def test_server_without_ranges_restarts_from_the_first_byte(server, tmp_path):
    registry = _registry(server)
    server.ranges = False
    server.cut.add("/tiny/train.txt")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "train.txt.part").write_bytes(b"stale bytes from another file")
    datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == TRAIN


def test_complete_part_file_is_checked_without_fetching_the_body(server, tmp_path):
    registry = _registry(server)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "valid.txt.part").write_bytes(VALID)  # no size pinned: the server says 416
    datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "valid.txt").read_bytes() == VALID


def test_corrupt_download_is_refused_and_deleted(server, tmp_path):
    registry = _registry(server, digest=_sha(b"other bytes"))
    with pytest.raises(RnnkitError, match="not the pinned") as error:
        datasets.download("tiny", tmp_path, registry=registry)
    assert "\n" not in str(error.value) and "train.txt" in str(error.value)
    assert list((tmp_path / "tiny").iterdir()) == []


@pytest.mark.parametrize("send_length", [True, False])
def test_a_body_longer_than_the_pinned_size_is_not_written_past_it(server, tmp_path, send_length):
    big = TRAIN * 30
    registry = _registry(server)
    server.files["/tiny/train.txt"] = big  # pinned: len(TRAIN) bytes
    server.send_length = send_length
    with pytest.raises(RnnkitError, match=f"more than the pinned {len(TRAIN)}"):
        datasets.download("tiny", tmp_path, registry=registry)
    assert list((tmp_path / "tiny").iterdir()) == []  # nothing kept, and never more than was pinned


def test_a_server_that_never_answers_fails_within_the_timeout_and_says_what_it_waits_for(tmp_path, monkeypatch,
                                                                                             capsys):
    import socket
    import time

    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        remote = RemoteFile("x.txt", (url + "/x.txt",), _sha(b"x"), size=1)
        monkeypatch.setattr(datasets, "REGISTRY", {"x": Dataset("x", "", (remote,), {"all": "x.txt"})})
        started = time.perf_counter()
        assert cli.main(["data", "get", "x", "--dir", str(tmp_path), "--timeout", "0.2"]) == 1
        assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert f"x.txt: waiting for 127.0.0.1:{url.rsplit(':', 1)[1]} (up to 0.2 s; try 1 of 3)" in err
    assert "timed out" in err.strip().splitlines()[-1]
    assert cli.main(["data", "get", "x", "--dir", str(tmp_path), "--timeout", "0"]) == 1
    assert "timeout must be a positive number of seconds" in capsys.readouterr().err


def test_file_in_place_with_other_content_is_left_alone(server, tmp_path):
    registry = _registry(server)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "train.txt").write_bytes(b"my own notes")
    with pytest.raises(RnnkitError, match="move it away"):
        datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == b"my own notes"
    assert server.requests == []


def test_next_address_is_tried_when_one_fails(server, tmp_path):
    registry = _registry(server)
    train = registry["tiny"].files[0]
    moved = RemoteFile(train.name, (server.url + "/gone/train.txt", *train.urls), train.digest, size=train.size)
    registry["tiny"] = Dataset("tiny", "", (moved, *registry["tiny"].files[1:]), registry["tiny"].splits)
    datasets.download("tiny", tmp_path, registry=registry)
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == TRAIN


def test_every_address_failing_is_one_error_naming_each(server, tmp_path):
    registry = _registry(server)
    server.files.clear()
    with pytest.raises(RnnkitError, match=r"could not download train\.txt: .*/tiny/train\.txt: HTTP 404"):
        datasets.download("tiny", tmp_path, registry=registry)


def test_unreachable_host_gives_up_after_a_few_attempts(tmp_path):
    with _Server() as closed:  # bound, then closed: nothing listens on its port
        url = closed.url
    remote = RemoteFile("x.txt", (url + "/x.txt",), _sha(b"x"))
    registry = {"x": Dataset("x", "", (remote,), {"all": "x.txt"})}
    with pytest.raises(RnnkitError, match="run again to resume"):
        datasets.download("x", tmp_path, registry=registry)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _zip_registry(server: _Server, archive: bytes) -> dict[str, Dataset]:
    server.files["/tiny-v1.zip"] = archive
    remote = RemoteFile("tiny-v1.zip", (server.url + "/tiny-v1.zip",), _sha(archive), size=len(archive),
                        unpack="tiny")
    return {"tiny": Dataset("tiny", "", (remote,), {"train": "wiki.train.tokens", "test": "wiki.test.tokens"})}


def test_archive_is_unpacked_after_its_check(server, tmp_path):
    archive = _zip({"tiny/wiki.train.tokens": TRAIN, "tiny/wiki.test.tokens": VALID, "README": b"outside"})
    registry = _zip_registry(server, archive)
    folder = datasets.download("tiny", tmp_path, registry=registry)
    assert (folder / "wiki.train.tokens").read_bytes() == TRAIN
    assert (folder / "wiki.test.tokens").read_bytes() == VALID
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-v1.zip", "wiki.test.tokens", "wiki.train.tokens"]

    before = (folder / "wiki.train.tokens").stat().st_mtime_ns
    server.requests.clear()
    datasets.download("tiny", tmp_path, registry=registry)
    assert server.requests == []
    assert (folder / "wiki.train.tokens").stat().st_mtime_ns == before


def test_archive_missing_a_split_is_an_error(server, tmp_path):
    registry = _zip_registry(server, _zip({"tiny/wiki.train.tokens": TRAIN}))
    with pytest.raises(RnnkitError, match="wiki.test.tokens is missing"):
        datasets.download("tiny", tmp_path, registry=registry)


def test_archive_member_escaping_its_folder_is_refused(server, tmp_path):
    registry = _zip_registry(server, _zip({"tiny/wiki.train.tokens": TRAIN, "tiny/../../evil.txt": b"x"}))
    with pytest.raises(RnnkitError, match="outside its folder"):
        datasets.download("tiny", tmp_path, registry=registry)
    assert not (tmp_path / "evil.txt").exists()


def test_mirror_replaces_the_addresses(server, tmp_path, monkeypatch):
    server.files["/tinyshakespeare/input.txt"] = b"not the real play"
    monkeypatch.setenv("RNNKIT_DATA_MIRROR", server.url + "/")
    with pytest.raises(RnnkitError, match="not the pinned"):
        datasets.download("tinyshakespeare", tmp_path)
    assert server.requests == [("/tinyshakespeare/input.txt", None)]
    assert list((tmp_path / "tinyshakespeare").iterdir()) == []


def test_registry_entries_are_well_formed():
    assert set(datasets.REGISTRY) == {"ptb", "wikitext-2", "wikitext-103", "tinyshakespeare"}
    for name, dataset in datasets.REGISTRY.items():
        assert dataset.name == name and dataset.splits
        for remote in dataset.files:
            assert remote.algorithm == "sha256" and re.fullmatch(r"[0-9a-f]{64}", remote.digest)
            assert remote.urls and all(u.startswith("https://") for u in remote.urls)


def test_missing_dataset_names_the_command_that_fetches_it(tmp_path):
    with pytest.raises(RnnkitError, match="rnnkit data get ptb"):
        datasets.split_paths("ptb", tmp_path)
    with pytest.raises(RnnkitError, match="unknown dataset 'nope'"):
        datasets.download("nope", tmp_path)


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "d"))
    assert datasets.default_root() == tmp_path / "d"
    monkeypatch.delenv("RNNKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert datasets.default_root() == tmp_path / "c" / "rnnkit" / "data"


def test_cli_get_downloads_and_reports(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "REGISTRY", _registry(server))
    assert cli.main(["data", "get", "tiny", "--dir", str(tmp_path)]) == 0
    assert "tiny: ready in" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "train.txt").read_bytes() == TRAIN


def test_cli_get_refuses_a_corrupt_file_in_one_line(server, tmp_path, monkeypatch, capsys):
    server.files["/ptb/ptb.train.txt"] = b"corrupt"
    monkeypatch.setenv("RNNKIT_DATA_MIRROR", server.url)
    assert cli.main(["data", "get", "ptb", "--dir", str(tmp_path)]) == 1
    assert "not the pinned" in _one_line_error(capsys)
    assert list((tmp_path / "ptb").iterdir()) == []


def test_cli_get_unknown_name_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "get", "imagenet", "--dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "imagenet").exists()


def test_cli_list_shows_every_dataset(tmp_path, capsys):
    assert cli.main(["data", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^{re.escape(n)} +not downloaded", out, re.M) for n in datasets.REGISTRY)
