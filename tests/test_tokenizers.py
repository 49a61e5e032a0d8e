"""Tokenizers: round trips, <eos>/<unk> rules, vocabulary caps, save/load, bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.errors import RnnkitError
from rnnkit.data import (
    EOS,
    UNK,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_from_text,
)

TEXT = "the cat sat on the mat\nthe dog sat\n\na cat ran\n"
ALPHABET = "abcde \nxyzé😀"


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    lines = ["the cat sat on the mat", "the dog sat on the log", "héllo wörld 😀 <unk>"] * 20
    return train_tokenizer_from_text("bpe", ["\n".join(lines) + "\n"], vocab_size=300)


# --- char -------------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.text(alphabet=ALPHABET))
def test_char_round_trip(text: str) -> None:
    tok = train_tokenizer_from_text("char", [ALPHABET])
    ids = tok.encode(text)
    assert len(ids) == len(text) and UNK not in map(tok.token, ids)
    assert tok.decode(ids) == text
    assert tok.encode(text, add_eos=False) == ids  # char has no <eos>: the flag changes nothing


def test_char_vocabulary() -> None:
    tok = train_tokenizer_from_text("char", ["aaab\nb\n"])
    # <unk> first, then by count: a (3), \n (2) before b (2) in code-point order
    assert [tok.token(i) for i in range(tok.vocab_size)] == [UNK, "a", "\n", "b"]
    assert tok.unk_id == 0 and tok.eos_id is None and tok.kind == "char"
    assert tok.encode("ab\nz") == [1, 3, 2, 0]
    assert tok.unknown_words("zab?z") == ["z", "?"]
    capped = train_tokenizer_from_text("char", ["aaab\nb\n"], vocab_size=3)
    assert capped.vocab_size == 3 and capped.encode("b") == [0]
    rare = train_tokenizer_from_text("char", ["aaab\nb\n"], min_count=3)
    assert [rare.token(i) for i in range(rare.vocab_size)] == [UNK, "a"]


# --- word -------------------------------------------------------------------------------------


def test_word_eos_at_line_ends() -> None:
    tok = train_tokenizer_from_text("word", [TEXT])
    assert tok.eos_id == 1 and tok.unk_id == 0 and tok.token(1) == EOS
    words = lambda text, **kw: [tok.token(i) for i in tok.encode(text, **kw)]  # noqa: E731
    assert words("the cat\n\nsat") == ["the", "cat", EOS, EOS, "sat", EOS]
    assert words("the cat\n") == ["the", "cat", EOS]
    # a prompt: its unfinished last line stays open; the line ends it has keep their <eos>
    assert words("the cat\nsat on the", add_eos=False) == ["the", "cat", EOS, "sat", "on", "the"]
    assert words("the cat\n", add_eos=False) == ["the", "cat", EOS]
    assert tok.encode("") == [] and tok.encode("  \t ") == []
    assert tok.decode(tok.encode("  the   cat \n sat")) == "the cat\nsat\n"


def test_word_unk_rules() -> None:
    # counts: the 3, sat 2, cat 2, ...: ties in code-point order
    tok = train_tokenizer_from_text("word", [TEXT], vocab_size=5)
    assert [tok.token(i) for i in range(5)] == [UNK, EOS, "the", "cat", "sat"]
    assert tok.encode("the dog <unk> sat", add_eos=False) == [2, 0, 0, 4]  # literal <unk> is <unk>
    assert tok.unknown_words("the dog and the dog") == ["dog", "and"]
    rare = train_tokenizer_from_text("word", [TEXT], min_count=2)
    assert [rare.token(i) for i in range(rare.vocab_size)] == [UNK, EOS, "the", "cat", "sat"]
    # <unk> and <eos> in the training text are not counted as words
    specials = train_tokenizer_from_text("word", ["a <unk> <eos> <unk>\n"])
    assert [specials.token(i) for i in range(specials.vocab_size)] == [UNK, EOS, "a"]


@given(st.lists(st.integers(0, 9)))
def test_word_ids_round_trip(ids: list[int]) -> None:
    tok = train_tokenizer_from_text("word", [TEXT])
    assert tok.vocab_size == 10
    assert tok.encode(tok.decode(ids), add_eos=False) == ids


# --- bpe --------------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.text(st.characters(exclude_characters="<", exclude_categories=["Cs"]), max_size=60))
def test_bpe_round_trip(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text, add_eos=False)
    assert bpe.decode(ids) == text
    assert bpe.unk_id not in ids and bpe.unknown_words(text) == []


def test_bpe_lines_and_specials(bpe: Tokenizer) -> None:
    assert bpe.vocab_size <= 300 and bpe.kind == "bpe"
    assert (bpe.unk_id, bpe.eos_id) == (0, 1) and bpe.token(0) == UNK and bpe.id(EOS) == 1
    ids = bpe.encode("the cat\nsat")
    assert ids.count(bpe.eos_id) == 2 and ids[-1] == bpe.eos_id
    assert bpe.encode("the cat\nsat", add_eos=False).count(bpe.eos_id) == 1
    assert bpe.encode("the cat\n", add_eos=False) == bpe.encode("the cat\n")
    assert bpe.decode(ids) == "the cat\nsat\n"
    assert bpe.encode("<unk>", add_eos=False) == [bpe.unk_id]  # as Penn Treebank writes it
    assert bpe.id("Ġcat") == bpe.encode(" cat", add_eos=False)[0]  # learned merges
    assert (bpe.encode_array("the cat\nsat").tolist()) == ids


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 299), max_size=40))
def test_bpe_streams_whole_characters_and_equals_decoding_at_once(bpe: Tokenizer, ids: list[int]) -> None:
    # any ids, so pieces end inside a character's bytes and bytes arrive that make no character
    ids = [i % bpe.vocab_size for i in ids]
    stream = bpe.stream()
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) + stream.flush() == bpe.decode(ids)


def test_bpe_stream_holds_a_character_back_until_its_last_byte(bpe: Tokenizer) -> None:
    # "Ärger" and an emoji are several bytes each; byte-level pieces may cut them
    ids = bpe.encode("Ärger über 😀 héllo\nwörld", add_eos=False)
    stream = bpe.stream()
    pieces = [stream.step(i) for i in ids]
    assert "".join(pieces) + stream.flush() == "Ärger über 😀 héllo\nwörld"
    assert not any("\ufffd" in p for p in pieces) and "" in pieces  # something was held back


@pytest.mark.parametrize("kind", ["char", "word"])
@settings(deadline=None)
@given(ids=st.lists(st.integers(0, 100), max_size=30))
def test_char_and_word_streams_equal_decoding_at_once(kind: str, ids: list[int]) -> None:
    tok = train_tokenizer_from_text(kind, [TEXT + "é😀\n"])
    ids = [i % tok.vocab_size for i in ids]
    stream = tok.stream()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_lone_surrogates(bpe: Tokenizer) -> None:
    # what a command line that is not UTF-8 decodes to
    prompt = "the caf\udce9 sat"
    assert bpe.decode(bpe.encode(prompt, add_eos=False)) == "the caf\ufffd sat"
    assert bpe.unknown_words(prompt) == ["caf\udce9"]
    word = train_tokenizer_from_text("word", [TEXT])
    assert word.unknown_words(prompt) == ["caf\udce9"]
    char = train_tokenizer_from_text("char", [TEXT])
    assert char.encode("\udce9") == [char.unk_id]


def test_bpe_vocab_size_default_and_floor() -> None:
    tok = train_tokenizer_from_text("bpe", ["abc abd\n"])
    assert 258 <= tok.vocab_size <= 8000  # 256 bytes + <unk> + <eos> + the few merges there are
    with pytest.raises(RnnkitError, match="at least 258"):
        train_tokenizer_from_text("bpe", ["abc\n"], vocab_size=100)


# --- every kind -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_save_load(tmp_path, kind: str) -> None:
    tok = train_tokenizer_from_text(kind, [TEXT + "héllo 😀\n"], vocab_size=300 if kind == "bpe" else None)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    tok.save(path)  # overwrites in place
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "rnnkit-tokenizer" and data["kind"] == kind and data["version"] == 1
    loaded = load_tokenizer(path)
    assert loaded == tok and type(loaded) is type(tok)
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(TEXT) == tok.encode(TEXT) and loaded.vocab_size == tok.vocab_size
    assert Tokenizer.from_json(tok.to_json()) == tok


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_token_and_id_lookups(kind: str) -> None:
    tok = train_tokenizer_from_text(kind, [TEXT])
    assert all(tok.id(tok.token(i)) == i for i in range(tok.vocab_size))
    assert tok.id(UNK) == tok.unk_id == 0
    for bad in (-1, tok.vocab_size):
        with pytest.raises(IndexError):
            tok.token(bad)
    with pytest.raises(IndexError):
        tok.decode([tok.vocab_size])
    with pytest.raises(RnnkitError, match="not in the"):
        tok.id("television")


def test_train_from_files_and_folders(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("one two\n", encoding="utf-8")
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.txt").write_text("two three", encoding="utf-8")
    (sub / "skip.md").write_text("four", encoding="utf-8")
    tok = train_tokenizer("word", tmp_path)
    assert [tok.token(i) for i in range(tok.vocab_size)] == [UNK, EOS, "two", "one", "three"]
    assert train_tokenizer("word", [tmp_path / "a.txt", sub]) == tok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sentencepiece"}, "unknown tokenizer kind 'sentencepiece'"),
        ({"kind": "word", "vocab_size": 2}, "vocab_size of at least 3"),
        ({"kind": "char", "vocab_size": True}, "vocab_size"),
        ({"kind": "word", "min_count": 0}, "min_count must be a positive integer"),
    ],
)
def test_bad_training_arguments(kwargs: dict, message: str) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(RnnkitError, match=message):
        train_tokenizer_from_text(kind, [TEXT], **kwargs)


def test_nothing_to_learn(tmp_path) -> None:
    with pytest.raises(RnnkitError, match="no words"):
        train_tokenizer_from_text("word", [" \n\t\n"])
    with pytest.raises(RnnkitError, match="not found"):
        train_tokenizer("char", tmp_path / "missing.txt")


def doc(**fields) -> str:
    return json.dumps({"format": "rnnkit-tokenizer", "version": 1, **fields})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "tokenizer file not found"),
        ("{not json", "tokenizer file is damaged"),
        (b"\x80\x81", "tokenizer file is damaged"),
        ("[1, 2]", "not an rnnkit tokenizer"),
        (doc(version=2, kind="char", tokens=["<unk>"]), "version 2"),
        (doc(kind="pickle"), "unknown tokenizer kind 'pickle'"),
        (doc(kind="word"), 'needs "tokens"'),
        (doc(kind="word", tokens=["a"]), "must begin with <unk>, <eos>"),
        (doc(kind="word", tokens=["<unk>", "<eos>", "a", "a"]), "'a' twice"),
        (doc(kind="word", tokens=["<unk>", "<eos>", "a b"]), "without whitespace"),
        (doc(kind="char", tokens=["<unk>", "ab"]), "single characters"),
        (doc(kind="bpe", huggingface={"model": 3}), "does not load"),
        (doc(kind="bpe"), 'needs "huggingface"'),
    ],
)
def test_bad_tokenizer_files(tmp_path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "tokenizer.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(RnnkitError, match=message) as error:
        load_tokenizer(path)
    assert "\n" not in str(error.value)


def test_bpe_without_specials_is_refused(bpe: Tokenizer) -> None:
    data = bpe.to_json()
    data["huggingface"]["added_tokens"] = []
    vocab = data["huggingface"]["model"]["vocab"]
    del vocab[EOS]
    with pytest.raises(RnnkitError, match="special tokens"):
        Tokenizer.from_json(data)
