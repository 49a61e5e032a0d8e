"""Batching for truncated BPTT: the drawing, contiguous streams, coverage, resuming, carried state."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.errors import RnnkitError
from rnnkit.data import BPTTBatches, detach_state


@pytest.fixture(scope="module")
def memmap(tmp_path_factory) -> np.memmap:
    path = tmp_path_factory.mktemp("ids") / "train.bin"
    np.arange(3000, dtype="<u2").tofile(path)
    return np.memmap(path, dtype="<u2", mode="r")


def letters(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[string.ascii_lowercase.index(c) for c in row.split()] for row in rows])


def test_the_docstring_drawing() -> None:
    batches = BPTTBatches(np.arange(26), batch_size=4, bptt=2)
    assert len(batches) == 3 and batches.steps == 6
    expected = [
        (["a g m s", "b h n t"], ["b h n t", "c i o u"]),
        (["c i o u", "d j p v"], ["d j p v", "e k q w"]),
        (["e k q w"], ["f l r x"]),
    ]
    for (x, y), (ex, ey) in zip(batches, expected, strict=True):
        assert x.dtype == y.dtype == torch.long
        assert torch.equal(x, letters(ex)) and torch.equal(y, letters(ey))


def as_input(kind: str, ids: np.ndarray, memmap: np.memmap):
    if kind == "memmap":
        return memmap[: len(ids)]  # still a memmap, of the same values
    return torch.from_numpy(ids) if kind == "torch" else ids


@settings(deadline=None)
@given(st.integers(1, 8), st.integers(1, 12), st.integers(0, 60), st.sampled_from(["numpy", "memmap", "torch"]))
def test_windows_tile_the_streams(memmap, batch_size: int, bptt: int, extra: int, kind: str) -> None:
    n = batch_size * (bptt + 1) + extra
    ids = np.arange(n, dtype=np.int64)
    batches = BPTTBatches(as_input(kind, ids, memmap), batch_size, bptt)
    steps = n // batch_size
    streams = torch.from_numpy(ids[: batch_size * steps].reshape(batch_size, steps)).t()  # (L, B)
    windows = list(batches)
    assert len(windows) == len(batches) == -(-(steps - 1) // bptt)
    for i, (x, y) in enumerate(windows):
        assert x.shape == y.shape and x.shape[1] == batch_size and 1 <= x.shape[0] <= bptt
        assert x.shape[0] == bptt or i == len(windows) - 1  # only the last window is short
        assert torch.equal(y[:-1], x[1:])  # y is x one step later
        if i:
            assert torch.equal(x[0], windows[i - 1][1][-1])  # each row continues the window before
    xs, ys = torch.cat([x for x, _ in windows]), torch.cat([y for _, y in windows])
    assert torch.equal(xs, streams[:-1]) and torch.equal(ys, streams[1:])
    covered = torch.cat([xs.flatten(), ys[-1]]).sort().values
    assert torch.equal(covered, torch.arange(batch_size * steps))  # every kept id, once


def test_resume_from_a_window(memmap) -> None:
    for ids in (np.asarray(memmap[:500]), memmap[:500]):
        batches = BPTTBatches(ids, batch_size=3, bptt=7)
        every = list(batches)
        for start in (0, 5, len(batches) - 1, len(batches)):
            rest = list(batches.iter_from(start))
            assert len(rest) == len(every) - start
            for (x, y), (x0, y0) in zip(rest, every[start:], strict=True):
                assert torch.equal(x, x0) and torch.equal(y, y0)
        assert all(torch.equal(batches.window(i)[0], every[i][0]) for i in range(len(every)))
        for bad in (-1, len(batches) + 1):
            with pytest.raises(IndexError):
                next(batches.iter_from(bad))
        with pytest.raises(IndexError):
            batches.window(len(batches))


def test_memmaps_are_read_per_window(memmap) -> None:
    batches = BPTTBatches(memmap, batch_size=4, bptt=5, device="cpu")
    x, y = batches.window(2)
    in_memory = BPTTBatches(np.asarray(memmap), batch_size=4, bptt=5).window(2)
    assert torch.equal(x, in_memory[0]) and torch.equal(y, in_memory[1])
    assert x.dtype == torch.long and x.is_contiguous() and x.shape == (5, 4)


def test_just_enough_tokens() -> None:
    (x, y), = list(BPTTBatches(np.arange(12), batch_size=3, bptt=3))
    assert x.shape == (3, 3) and torch.equal(y, x + 1)


@pytest.mark.parametrize(
    ("n", "batch_size", "bptt", "message"),
    [
        (11, 3, 3, r"the valid split has 11 tokens, too few for one batch: batch_size 3 x \(bptt 3 \+ 1\) needs .* 12"),
        (100, 0, 3, "batch_size must be a positive integer, got 0"),
        (100, 2, -1, "bptt must be a positive integer, got -1"),
        (100, 2.0, 3, "batch_size must be a positive integer, got 2.0"),
    ],
)
def test_bad_batching(n: int, batch_size, bptt, message: str) -> None:
    with pytest.raises(RnnkitError, match=message):
        BPTTBatches(np.arange(n), batch_size, bptt, name="valid split")


def test_carried_state_equals_one_long_pass() -> None:
    torch.manual_seed(0)
    vocab, batch_size, bptt = 11, 3, 4
    ids = torch.randint(vocab, (batch_size * 17 + 2,))
    embed, lstm = torch.nn.Embedding(vocab, 5), torch.nn.LSTM(5, 6)
    batches = BPTTBatches(ids, batch_size, bptt)
    state, outputs = None, []
    for x, _ in batches:
        state = detach_state(state)
        out, state = lstm(embed(x), state)  # x (T, B) -> out (T, B, H)
        outputs.append(out)
    streams = ids[: batch_size * batches.steps].view(batch_size, -1).t()[:-1]  # (L - 1, B)
    whole, _ = lstm(embed(streams))
    torch.testing.assert_close(torch.cat(outputs), whole)
    assert all(s.grad_fn is not None for s in state)
    assert all(s.grad_fn is None and not s.requires_grad for s in detach_state(state))


def test_detach_state_keeps_the_shape_of_the_state() -> None:
    h = torch.ones(2, 3, requires_grad=True) * 2
    assert detach_state(None) is None
    assert not detach_state(h).requires_grad
    nested = detach_state([(h, h), h])
    assert isinstance(nested, list) and isinstance(nested[0], tuple)
    assert torch.equal(nested[0][1], h.detach())


@pytest.mark.parametrize("memmap", [False, True])
@settings(max_examples=20, deadline=None)
@given(parts=st.sampled_from([1, 2, 3, 4]), per_part=st.integers(1, 3), bptt=st.integers(1, 6), extra=st.integers(0, 30))
def test_shards_cut_every_window_into_the_parts_of_its_streams(memmap, parts, per_part, bptt, extra, tmp_path_factory) -> None:
    """The k-th of n shards reads streams k*B/n .. (k+1)*B/n - 1 of the whole batch, window by window:
    what n processes training together read is exactly what one reads."""
    batch_size = parts * per_part
    ids = np.arange(batch_size * (bptt + 1) + extra, dtype=np.uint16)
    if memmap:
        path = tmp_path_factory.mktemp("ids") / "ids.bin"
        ids.tofile(path)
        ids = np.memmap(path, dtype=np.uint16, mode="r", shape=ids.shape)
    whole = BPTTBatches(ids, batch_size, bptt)
    shards = [BPTTBatches(ids, batch_size, bptt, shard=(k, parts)) for k in range(parts)]
    assert all(len(s) == len(whole) and s.batch_size == per_part for s in shards)
    for i in range(len(whole)):
        for a, b in zip(whole[i], zip(*(s[i] for s in shards), strict=True), strict=True):
            assert torch.equal(a, torch.cat(b, dim=1))


def test_a_shard_must_be_an_equal_part() -> None:
    with pytest.raises(ValueError, match="equal parts"):
        BPTTBatches(np.arange(100), 6, 4, shard=(0, 4))
