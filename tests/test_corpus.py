"""Corpus: streaming reads, the deterministic split, the memmaps on disk, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.errors import RnnkitError
from rnnkit.data import build_corpus, files, open_corpus, plan_splits, train_tokenizer_from_text
from rnnkit.data.files import read_blocks, whole

WORDS = "the cat sat on a mat and dog ran far away".split()


def lines_of_text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, size=rng.integers(1, 9))) + "\n" for _ in range(n))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def concat(corpus) -> list[int]:
    return np.concatenate([corpus.train, corpus.valid, corpus.test]).tolist()


# --- reading ----------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.text(alphabet="ab \n\ré😀", max_size=40), st.integers(1, 9))
def test_blocks_rebuild_the_text(text: str, block_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "t.txt", text)
        blocks = list(read_blocks(whole([path]), block_bytes=block_bytes))
    expected = text.replace("\r\n", "\n")
    if expected and not expected.endswith("\n"):
        expected += "\n"  # a file's last line always ends
    assert "".join(blocks) == expected
    assert all(b.endswith("\n") for b in blocks)  # cut at line ends only


def test_long_lines_are_cut_between_words(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(files, "LONG_LINE_BYTES", 8)
    text = " ".join(f"w{i}" for i in range(200))
    blocks = list(read_blocks(whole([write(tmp_path / "a.txt", text)]), block_bytes=4))
    assert len(blocks) > 10 and "".join(blocks) == text + "\n"
    assert [w for b in blocks for w in b.split()] == text.split()  # no word cut in two
    one_word = "é" * 50  # no space at all: cut between characters, never inside one
    blocks = list(read_blocks(whole([write(tmp_path / "b.txt", one_word)]), block_bytes=3))
    assert len(blocks) > 1 and "".join(blocks) == one_word + "\n"


def test_offsets_in_errors_count_from_the_file_start(tmp_path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nmore good\nbad \xff here\n")
    with pytest.raises(RnnkitError, match=r"invalid byte 0xff at byte offset 24"):
        list(read_blocks(whole([path]), block_bytes=4))


# --- bad input --------------------------------------------------------------------------------


def bad_sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "no_txt").mkdir()
    write(tmp_path / "no_txt" / "notes.md", "text")
    write(tmp_path / "empties" / "a.txt", "")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return {
        "missing": (tmp_path / "nope.txt", "training text not found: .*nope.txt"),
        "empty file": (write(tmp_path / "empty.txt", ""), "training text file is empty: .*empty.txt"),
        "folder without .txt": (tmp_path / "no_txt", "folder .*no_txt has no .txt files"),
        "folder of empty files": (tmp_path / "empties", "has only empty .txt files"),
        "binary": (binary, r"image.txt looks like a binary file \(NUL byte at byte offset 8\)"),
        "not UTF-8": (latin1, "latin1.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 3"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty file", "folder without .txt", "folder of empty files", "binary", "not UTF-8"]
)
def test_bad_sources(tmp_path, case: str) -> None:
    source, message = bad_sources(tmp_path)[case]
    with pytest.raises(RnnkitError, match=message) as error:
        build_corpus(source, out_dir=tmp_path / "data", tokenizer="char")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "data" / "corpus.json").exists()


def test_bad_valid_text_is_named(tmp_path) -> None:
    train = write(tmp_path / "train.txt", lines_of_text(20))
    with pytest.raises(RnnkitError, match="valid text not found"):
        build_corpus(train, tmp_path / "nope.txt", out_dir=tmp_path / "data")
    with pytest.raises(RnnkitError, match="test text file is empty"):
        build_corpus(train, train, write(tmp_path / "empty.txt", ""), out_dir=tmp_path / "data")


def test_a_failed_rebuild_leaves_the_old_corpus(tmp_path) -> None:
    train = write(tmp_path / "train.txt", lines_of_text(50))
    valid = write(tmp_path / "valid.txt", lines_of_text(5, seed=1))
    old = build_corpus(train, valid, valid, out_dir=tmp_path / "data")
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    valid.write_bytes(b"fine\n\x00binary")
    with pytest.raises(RnnkitError, match="binary"):
        build_corpus(train, valid, valid, out_dir=tmp_path / "data", tokenizer=old.tokenizer)
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before  # no temp files either
    assert open_corpus(tmp_path / "data", old.tokenizer).valid.tolist() == old.valid.tolist()


# --- splits -----------------------------------------------------------------------------------


def test_given_splits(tmp_path) -> None:
    texts = {"train": lines_of_text(40), "valid": lines_of_text(5, seed=1), "test": "the cat zebra\non a mat"}
    paths = {name: write(tmp_path / f"{name}.txt", text) for name, text in texts.items()}
    corpus = build_corpus(paths["train"], paths["valid"], paths["test"], out_dir=tmp_path / "data")
    tok = corpus.tokenizer
    assert tok.kind == "word" and tok.unknown_words("zebra") == ["zebra"]  # trained on train only
    for name, text in texts.items():
        ids = getattr(corpus, name)
        assert isinstance(ids, np.memmap) and ids.dtype == np.dtype("<u2") and not ids.flags.writeable
        assert ids.tolist() == tok.encode(text)
    assert tok.decode(corpus.test) == "the cat <unk>\non a mat\n"

    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["corpus.json", "test.bin", "train.bin", "valid.bin"]
    meta = json.loads((tmp_path / "data" / "corpus.json").read_text())
    assert meta["format"] == "rnnkit-corpus" and meta["dtype"] == "<u2" and meta["tokenizer_kind"] == "word"
    assert meta["vocab_size"] == tok.vocab_size and meta["tokenizer"] == tok.fingerprint()
    assert meta["splits"]["valid"] == {"file": "valid.bin", "tokens": len(corpus.valid)}
    assert (tmp_path / "data" / "train.bin").stat().st_size == 2 * len(corpus.train)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_carved_split_is_deterministic_and_whole(tmp_path, kind: str) -> None:
    text = lines_of_text(200) + "a zebra here\n"
    train = write(tmp_path / "all.txt", text)
    one = build_corpus(train, out_dir=tmp_path / "one", tokenizer=kind, vocab_size=300 if kind == "bpe" else None)
    two = build_corpus(train, out_dir=tmp_path / "two", tokenizer=kind, vocab_size=300 if kind == "bpe" else None)
    assert one.tokenizer == two.tokenizer and concat(one) == concat(two)
    # cut at line ends: the three splits are the whole text's ids, in order
    assert concat(one) == one.tokenizer.encode(text)
    first_held_out = text.splitlines()[len(one.tokenizer.decode(one.train).splitlines())]
    assert one.tokenizer.decode(one.valid).startswith(first_held_out)
    if kind != "bpe":  # the last line is held out, so its new word is not in the vocabulary
        assert one.tokenizer.unknown_words("zebra")


def test_carve_points(tmp_path) -> None:
    text = lines_of_text(300)
    path = write(tmp_path / "all.txt", text)
    plan = plan_splits(path)
    size = len(text.encode())
    (train,), (valid,), (test,) = plan["train"], plan["valid"], plan["test"]
    assert train.start == 0 and train.end == valid.start and valid.end == test.start and test.end == size
    data = text.encode()
    for cut, mark in ((valid.start, 0.90), (test.start, 0.95)):
        assert data[cut - 1 : cut] == b"\n" and cut <= mark * size  # the last line end before the mark
        assert b"\n" not in data[cut : int(mark * size)]
    held = plan_splits(path, holdout=0.2)
    assert held["valid"][0].start <= 0.6 * size < held["valid"][0].start + 200


def test_carve_across_files_in_a_folder(tmp_path) -> None:
    parts = [lines_of_text(30, seed=s) for s in range(4)]
    for k, part in enumerate(parts):
        write(tmp_path / "books" / f"part{k}.txt", part.rstrip("\n"))  # no final line end: added
    write(tmp_path / "books" / "empty.txt", "")
    corpus = build_corpus(tmp_path / "books", out_dir=tmp_path / "data")
    assert concat(corpus) == corpus.tokenizer.encode("".join(parts))
    plan = plan_splits(tmp_path / "books")
    assert [s.path.name for s in plan["train"]][:1] == ["part0.txt"]
    assert plan["test"][-1].path.name == "part3.txt"


def test_text_without_line_breaks_is_cut_at_spaces(tmp_path) -> None:
    text = " ".join(WORDS[i % len(WORDS)] + str(i % 7) for i in range(600))  # like text8: one line
    corpus = build_corpus(write(tmp_path / "text8.txt", text), out_dir=tmp_path / "data")
    assert min(len(corpus.valid), len(corpus.test)) > 20
    assert concat(corpus) == corpus.tokenizer.encode(text)  # no word was cut in two


def test_one_split_given_the_other_carved(tmp_path) -> None:
    text = lines_of_text(100)
    train = write(tmp_path / "train.txt", text)
    valid = write(tmp_path / "valid.txt", "the cat\n")
    corpus = build_corpus(train, valid, out_dir=tmp_path / "data", tokenizer="char")
    assert corpus.valid.tolist() == corpus.tokenizer.encode("the cat\n")
    assert np.concatenate([corpus.train, corpus.test]).tolist() == corpus.tokenizer.encode(text)
    assert 0.03 < len(corpus.test) / len(text) < 0.07


def test_too_small_to_hold_out(tmp_path) -> None:
    with pytest.raises(RnnkitError, match=r"training text \(13 bytes\) is too small to hold out a valid split"):
        build_corpus(write(tmp_path / "t.txt", "one\ntwo\nthree"), out_dir=tmp_path / "data")
    with pytest.raises(RnnkitError, match="holdout must be a fraction"):
        plan_splits(write(tmp_path / "u.txt", lines_of_text(10)), holdout=0.5)


def test_large_vocabularies_use_uint32(tmp_path) -> None:
    text = " ".join(f"w{i}" for i in range(70_000)) + "\n"
    path = write(tmp_path / "big.txt", text)
    corpus = build_corpus(path, path, path, out_dir=tmp_path / "data")
    assert corpus.tokenizer.vocab_size == 70_002 and corpus.train.dtype == np.dtype("<u4")
    assert corpus.train.tolist() == corpus.tokenizer.encode(text) and int(corpus.train.max()) == 70_001


# --- the cache --------------------------------------------------------------------------------


def test_open_and_reuse(tmp_path) -> None:
    train = write(tmp_path / "train.txt", lines_of_text(100))
    corpus = build_corpus(train, out_dir=tmp_path / "data")
    reopened = open_corpus(tmp_path / "data", corpus.tokenizer)
    assert concat(reopened) == concat(corpus)

    stamp = (tmp_path / "data" / "train.bin").stat().st_mtime_ns
    again = build_corpus(train, out_dir=tmp_path / "data", tokenizer=corpus.tokenizer)
    assert (tmp_path / "data" / "train.bin").stat().st_mtime_ns == stamp and concat(again) == concat(corpus)

    write(train, lines_of_text(100, seed=5))  # the source changed: built again
    changed = build_corpus(train, out_dir=tmp_path / "data", tokenizer=corpus.tokenizer)
    assert concat(changed) == corpus.tokenizer.encode(lines_of_text(100, seed=5))


def test_open_refuses_what_does_not_match(tmp_path) -> None:
    corpus = build_corpus(write(tmp_path / "train.txt", lines_of_text(100)), out_dir=tmp_path / "data")
    other = train_tokenizer_from_text("word", ["other words\n"])
    with pytest.raises(RnnkitError, match="made with another tokenizer"):
        open_corpus(tmp_path / "data", other)
    with pytest.raises(RnnkitError, match="corpus description not found: .*corpus.json"):
        open_corpus(tmp_path / "elsewhere", corpus.tokenizer)
    with open(tmp_path / "data" / "valid.bin", "r+b") as f:
        f.truncate(3)
    with pytest.raises(RnnkitError, match="valid.bin does not hold the .* ids corpus.json says"):
        open_corpus(tmp_path / "data", corpus.tokenizer)
    (tmp_path / "data" / "test.bin").unlink()
    meta = json.loads((tmp_path / "data" / "corpus.json").read_text())
    del meta["splits"]["valid"]
    (tmp_path / "data" / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(RnnkitError, match="incomplete or damaged"):
        open_corpus(tmp_path / "data", corpus.tokenizer)
    (tmp_path / "data" / "corpus.json").write_text("{}")
    with pytest.raises(RnnkitError, match="not an rnnkit corpus description"):
        open_corpus(tmp_path / "data", corpus.tokenizer)


# --- bounded memory ---------------------------------------------------------------------------

# VmHWM, the peak resident memory of this process image: ru_maxrss would also count the peak of
# the pytest process it was forked from, since Linux keeps it across exec
_MEASURE = """
import sys
from rnnkit.data import build_corpus

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

before = peak()
corpus = build_corpus(sys.argv[1], out_dir=sys.argv[2], tokenizer="word")
print(peak() - before, len(corpus.train))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_building_streams_in_bounded_memory(tmp_path) -> None:
    """A 60 MB corpus is built while the process grows by far less than that (about 15 MB, as
    for any size: one block of text and its ids at a time)."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"word{i}" for i in range(5000)])
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(48):
            words = rng.choice(vocab, size=(12_500, 12))
            f.write("\n".join(" ".join(line) for line in words) + "\n")
    size = path.stat().st_size
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(tmp_path / "data")],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    grown, tokens = map(int, result.stdout.split())
    assert tokens > 0.85 * 48 * 12_500 * 13
    assert grown < size / 2, f"peak memory grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB corpus"
