"""Tokenizers: text <-> token ids. Three kinds, one protocol, one JSON file.

    kind   a token is                                   line end    out of vocabulary
    char   one character                                "\\n" token  <unk>
    word   a whitespace-separated word                  <eos>       <unk> (beyond vocab_size or
                                                                    below min_count)
    bpe    a byte-level BPE piece (Hugging Face          <eos>       never: every byte has a token
           `tokenizers`), each line encoded alone

<unk> is id 0 for every kind and <eos> id 1 for word and bpe; the other ids follow by descending
count in the training text (char, word) or in merge order (bpe). A literal "<unk>" or "<eos>" in
word or bpe text reads as that token (Penn Treebank marks its rare words "<unk>").

Line ends: `encode(text)` gives every line an <eos>, the last one too even without its "\\n" (a
file's last line). `encode(prompt, add_eos=False)` gives <eos> only for the "\\n"s actually there,
so that a prompt's unfinished last line stays open for the model to continue. Decoding joins words
with spaces and turns <eos> back into "\\n". The char kind ignores `add_eos`: "\\n" is its own token.

Generated ids become text as they come through `stream()`: constant time per id, and for bpe only
whole characters (a piece may end inside a character's UTF-8 bytes); everything streamed, flushed
at the end, equals `decode` of all the ids at once.

On disk a tokenizer is one JSON file (`save`, `load_tokenizer`):

    {"format": "rnnkit-tokenizer", "version": 1, "kind": "char" | "word", "tokens": [...]}
        (tokens[i] is the token of id i)
    {"format": "rnnkit-tokenizer", "version": 1, "kind": "bpe", "huggingface": {...}}
        (the Hugging Face tokenizer.json, as an object)

Loading reads data only: nothing in the file is executed.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import RnnkitError
from ..io import read_json, write_json
from .files import read_blocks, text_files, whole

UNK, EOS = "<unk>", "<eos>"
KINDS = ("char", "word", "bpe")
FORMAT, VERSION = "rnnkit-tokenizer", 1
BPE_VOCAB_SIZE = 8000  # the default for bpe; char and word default to every token seen
_BPE_ALPHABET = 256  # byte-level: one base token per byte value
# half of a UTF-16 pair: no UTF-8 bytes, so no bpe pieces (a non-UTF-8 command line can bring one)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class Tokenizer(ABC):
    """The protocol every kind follows. Ids are ints in [0, vocab_size)."""

    kind: ClassVar[str]
    unk_id: int = 0
    eos_id: int | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """V: the number of ids, special tokens included."""

    @abstractmethod
    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Token ids of `text`; add_eos=False leaves an unfinished last line without <eos>."""

    def encode_array(self, text: str, add_eos: bool = True) -> np.ndarray:
        """`encode` as a 1-D int64 array, for the corpus writer."""
        return np.asarray(self.encode(text, add_eos), dtype=np.int64)

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of the ids; <eos> becomes "\\n"."""

    @abstractmethod
    def token(self, id: int) -> str:
        """The token string of an id; IndexError outside [0, vocab_size)."""

    @abstractmethod
    def id(self, token: str) -> int:
        """The id of a token string (for bpe a byte-level piece, e.g. "Ġthe"); RnnkitError if the
        vocabulary has no such token."""

    @property
    def line_end_id(self) -> int:
        """The token that ends a line: <eos>, or the newline character for a char tokenizer."""
        return self.eos_id if self.eos_id is not None else self.encode("\n")[-1]

    def encode_prompt(self, prompt: str) -> list[int]:
        """The ids a language model reads `prompt` as: a line end first, since training text has
        one before every line, then the prompt with its last line left open."""
        return [self.line_end_id, *self.encode(prompt, add_eos=False)]

    @abstractmethod
    def stream(self) -> TextStream:
        """A fresh `TextStream`: the text of ids given one at a time."""

    @abstractmethod
    def unknown_words(self, text: str) -> list[str]:
        """The words (characters, for char) of `text` that would read as <unk>, each once, in order
        of appearance: what a prompt loses, for a warning."""

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """The kind-specific part of `to_json`."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, **self._payload()}

    @staticmethod
    def from_json(data: Any) -> Tokenizer:
        """The tokenizer described by `to_json`'s output; RnnkitError if it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RnnkitError(f'not an rnnkit tokenizer (expected "format": "{FORMAT}")')
        if data.get("version") != VERSION:
            raise RnnkitError(f"tokenizer format version {data.get('version')!r} is not supported (expected {VERSION})")
        kind = data.get("kind")
        if kind not in _CLASSES:
            raise RnnkitError(f"unknown tokenizer kind {kind!r} (expected one of {', '.join(KINDS)})")
        return _CLASSES[kind]._from_payload(data)

    @classmethod
    @abstractmethod
    def _from_payload(cls, data: dict[str, Any]) -> Tokenizer: ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON file atomically (temp file in the same folder, fsync, rename)."""
        write_json(path, self.to_json())

    def fingerprint(self) -> str:
        """A hash of the vocabulary and rules: equal fingerprints encode alike."""
        canonical = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class TextStream(ABC):
    """Text of token ids given one at a time: `step(id)` returns the text that id adds ("" while a
    bpe piece ends inside a character), `flush()` whatever is held back. The concatenation of
    every step and the flush equals `decode` of all the ids."""

    @abstractmethod
    def step(self, id: int) -> str: ...

    def flush(self) -> str:
        return ""


class _CharStream(TextStream):
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.token = tokenizer.token

    def step(self, id: int) -> str:
        return self.token(id)


class _WordStream(TextStream):
    """Words joined by spaces within a line; <eos> ends the line."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.token, self.eos, self.line_start = tokenizer.token, tokenizer.eos_id, True

    def step(self, id: int) -> str:
        if id == self.eos:
            self.line_start = True
            return "\n"
        text = self.token(id) if self.line_start else " " + self.token(id)
        self.line_start = False
        return text


class _BytesStream(TextStream):
    """Byte-level pieces through an incremental UTF-8 decoder: a character is given out once its
    last byte has come; bytes that can never make one read as U+FFFD, as in `decode`."""

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.piece_bytes, self.eos = tokenizer.piece_bytes, tokenizer.eos_id
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, id: int) -> str:
        if id == self.eos:
            return self.flush() + "\n"
        return self.utf8.decode(self.piece_bytes(id))

    def flush(self) -> str:
        text = self.utf8.decode(b"", final=True)
        self.utf8.reset()
        return text


class _VocabTokenizer(Tokenizer):
    """A tokenizer defined by its list of tokens: tokens[i] is the token of id i."""

    specials: ClassVar[tuple[str, ...]]

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(self.specials)]) != self.specials:
            raise RnnkitError(f"a {self.kind} vocabulary must begin with {', '.join(self.specials)}")
        self._tokens = tokens
        self._index = {t: i for i, t in enumerate(tokens)}
        if len(self._index) != len(tokens):
            repeated = next(t for t, n in Counter(tokens).items() if n > 1)
            raise RnnkitError(f"the {self.kind} vocabulary lists {repeated!r} twice")

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def token(self, id: int) -> str:
        if not 0 <= id < len(self._tokens):
            raise IndexError(f"token id {id} is outside [0, {len(self._tokens)})")
        return self._tokens[id]

    def id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise RnnkitError(f"{token!r} is not in the {self.kind} vocabulary") from None

    def _payload(self) -> dict[str, Any]:
        return {"tokens": list(self._tokens)}

    @classmethod
    def _from_payload(cls, data: dict[str, Any]) -> Tokenizer:
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise RnnkitError(f'a {cls.kind} tokenizer needs "tokens": a list of strings')
        return cls(tokens)

    @classmethod
    def from_counts(cls, counts: Counter[str], vocab_size: int | None, min_count: int) -> _VocabTokenizer:
        """Specials, then the tokens seen at least min_count times, most frequent first (ties in
        code-point order), up to vocab_size ids in all."""
        for special in cls.specials:
            counts.pop(special, None)
        ranked = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        room = None if vocab_size is None else vocab_size - len(cls.specials)
        return cls([*cls.specials, *ranked[:room]])


class CharTokenizer(_VocabTokenizer):
    """Every character is a token, "\\n" included; characters outside the vocabulary read as <unk>."""

    kind = "char"
    specials = (UNK,)

    def __init__(self, tokens: Sequence[str]) -> None:
        super().__init__(tokens)
        bad = next((t for t in self._tokens[1:] if len(t) != 1), None)
        if bad is not None:
            raise RnnkitError(f"a char vocabulary holds single characters, not {bad!r}")
        # code point -> id, one array lookup per character instead of a dict lookup; the table's
        # last entry, <unk>, stands for every code point beyond it
        points = np.array([ord(t) for t in self._tokens[1:]], dtype=np.int64)
        self._table = np.full(int(points.max(initial=0)) + 2, self.unk_id, dtype=np.int64)
        self._table[points] = np.arange(1, len(self._tokens))

    def encode_array(self, text: str, add_eos: bool = True) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        return self._table[np.minimum(points, len(self._table) - 1)]

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.token(i) for i in ids)

    def stream(self) -> TextStream:
        return _CharStream(self)

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(c for c in text if c not in self._index))


class WordTokenizer(_VocabTokenizer):
    """Whitespace-separated words, <eos> at each line end (Penn Treebank convention)."""

    kind = "word"
    specials = (UNK, EOS)
    eos_id = 1

    def __init__(self, tokens: Sequence[str]) -> None:
        super().__init__(tokens)
        bad = next((t for t in self._tokens if not t or t.split() != [t]), None)
        if bad is not None:
            raise RnnkitError(f"a word vocabulary holds words without whitespace, not {bad!r}")

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        get, unk, eos = self._index.get, self.unk_id, self.eos_id
        *lines, last = text.split("\n")
        ids: list[int] = []
        for line in lines:
            ids.extend([get(w, unk) for w in line.split()])
            ids.append(eos)
        words = last.split()
        ids.extend([get(w, unk) for w in words])
        if add_eos and words:
            ids.append(eos)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        lines: list[str] = []
        words: list[str] = []
        for i in ids:
            if i == self.eos_id:
                lines.append(" ".join(words) + "\n")
                words = []
            else:
                words.append(self.token(i))
        return "".join(lines) + " ".join(words)

    def stream(self) -> TextStream:
        return _WordStream(self)

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(w for w in text.split() if w not in self._index))


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding (Hugging Face `tokenizers`) of each line, <eos> at line ends.

    Lines are encoded apart, so no piece spans a line end and <eos> plays the same part as in the
    word kind. Byte-level pieces cover every string: decode(encode(text, add_eos=False)) == text
    for any text without a literal "<unk>" or "<eos>" (or a lone surrogate, which reads as U+FFFD).
    """

    kind = "bpe"

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        unk, eos = hf.token_to_id(UNK), hf.token_to_id(EOS)
        if unk is None or eos is None:
            raise RnnkitError(f"a bpe tokenizer needs the special tokens {UNK} and {EOS}")
        self.unk_id: int = unk
        self.eos_id: int = eos

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def _encode_lines(self, text: str, add_eos: bool) -> Iterator[list[int]]:
        if not text.isascii():
            text = _SURROGATE.sub("\ufffd", text)
        *lines, last = text.split("\n")
        if last:
            lines.append(last)
        for k, encoding in enumerate(self._hf.encode_batch(lines, add_special_tokens=False)):
            yield encoding.ids
            if add_eos or k < len(lines) - 1 or not last:
                yield [self.eos_id]

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        return [i for piece in self._encode_lines(text, add_eos) for i in piece]

    def encode_array(self, text: str, add_eos: bool = True) -> np.ndarray:
        pieces = [np.asarray(p, dtype=np.int64) for p in self._encode_lines(text, add_eos)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        lines: list[list[int]] = [[]]
        for i in ids:
            self.token(i)  # checks the range
            if i == self.eos_id:
                lines.append([])
            else:
                lines[-1].append(i)
        return "\n".join(self._hf.decode_batch(lines, skip_special_tokens=False))

    def stream(self) -> TextStream:
        return _BytesStream(self)

    def piece_bytes(self, id: int) -> bytes:
        """The bytes a piece stands for: each character of a byte-level piece is one byte."""
        table = _byte_of_char()
        token = self.token(id)
        return bytes(table[c] for c in token) if all(c in table for c in token) else token.encode("utf-8")

    def token(self, id: int) -> str:
        token = self._hf.id_to_token(id) if id >= 0 else None
        if token is None:
            raise IndexError(f"token id {id} is outside [0, {self.vocab_size})")
        return token

    def id(self, token: str) -> int:
        id = self._hf.token_to_id(token)
        if id is None:
            raise RnnkitError(f"{token!r} is not in the bpe vocabulary")
        return id

    def unknown_words(self, text: str) -> list[str]:
        words = list(dict.fromkeys(text.split()))
        encodings = self._hf.encode_batch([_SURROGATE.sub("\ufffd", w) for w in words], add_special_tokens=False)
        return [w for w, e in zip(words, encodings, strict=True) if self.unk_id in e.ids or _SURROGATE.search(w)]

    def _payload(self) -> dict[str, Any]:
        return {"huggingface": json.loads(self._hf.to_str())}

    @classmethod
    def _from_payload(cls, data: dict[str, Any]) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(data.get("huggingface"), dict):
            raise RnnkitError('a bpe tokenizer needs "huggingface": a Hugging Face tokenizer.json object')
        try:
            hf = HFTokenizer.from_str(json.dumps(data["huggingface"]))
        except Exception as e:  # the Rust side raises a bare Exception
            raise RnnkitError(f"the Hugging Face tokenizer inside does not load: {e}") from None
        return cls(hf)


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's bytes_to_unicode), inverted: byte b is written as chr(b)
    where that character is printable and not a space, else as chr(256 + n), n counting the
    others in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}  # "!".."~", "¡".."¬", "®".."ÿ"
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    return table


_CLASSES: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer.json written by `Tokenizer.save`; RnnkitError if it is missing or not one."""
    path = Path(path)
    data = read_json(path, "tokenizer file")
    try:
        return Tokenizer.from_json(data)
    except RnnkitError as e:
        raise RnnkitError(f"{path}: {e}") from None


def train_tokenizer(
    kind: str,
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    vocab_size: int | None = None,
    min_count: int = 1,
) -> Tokenizer:
    """Train a tokenizer on text files (each source a file or a folder of .txt files), streaming
    them block by block. vocab_size counts every id, special tokens included (char and word
    default to every token seen, bpe to BPE_VOCAB_SIZE); tokens seen fewer than min_count times
    are left out (for bpe: pairs seen fewer than min_count times are not merged)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files = [f for source in sources for f in text_files(source, "training text")]
    return train_tokenizer_from_text(kind, read_blocks(whole(files)), vocab_size, min_count)


def train_tokenizer_from_text(
    kind: str, texts: Iterable[str], vocab_size: int | None = None, min_count: int = 1
) -> Tokenizer:
    """`train_tokenizer` on strings (whole texts, lines or `read_blocks` blocks: each must end at a
    line end or before whitespace, so that no word is cut in two)."""
    if kind not in KINDS:
        raise RnnkitError(f"unknown tokenizer kind {kind!r} (expected one of {', '.join(KINDS)})")
    least = {"char": 2, "word": 3, "bpe": _BPE_ALPHABET + 2}[kind]
    bad_size = isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < least
    if vocab_size is not None and bad_size:
        raise RnnkitError(f"a {kind} tokenizer needs vocab_size of at least {least}, got {vocab_size!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise RnnkitError(f"min_count must be a positive integer, got {min_count!r}")
    if kind == "bpe":
        return _train_bpe(texts, BPE_VOCAB_SIZE if vocab_size is None else vocab_size, min_count)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text if kind == "char" else text.split())
    cls = CharTokenizer if kind == "char" else WordTokenizer
    tokenizer = cls.from_counts(counts, vocab_size, min_count)
    if tokenizer.vocab_size == len(cls.specials):
        raise RnnkitError(f"the training text has no {'characters' if kind == 'char' else 'words'} to learn")
    return tokenizer


def _train_bpe(texts: Iterable[str], vocab_size: int, min_count: int) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_count,
        special_tokens=[UNK, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # line by line, as encode sees them, so that no merge spans a line end
    hf.train_from_iterator((text.split("\n") for text in texts), trainer=trainer)
    return BPETokenizer(hf)
