"""Batches for truncated backpropagation through time (TBPTT).

The ids are cut into B streams that run side by side, and an epoch walks all B at once in windows
of T = bptt steps. Window i+1 continues window i in every stream, so the state the model ends a
window with is the state it starts the next one with: carried across, but detached, so that
backpropagation stops at the window's edge.

    ids:  a b c d e f g h i j k l m n o p q r s t u v w x y z        N = 26, B = 4

    streams (B, L), L = N // B = 6; the N - B*L leftover ids (y z) are dropped:

        a b c d e f     <- stream 0
        g h i j k l     <- stream 1
        m n o p q r     <- stream 2
        s t u v w x     <- stream 3

    windows of bptt = 2, time-major (T, B): a row is one time step of all B streams, a column
    one stream; y is x one step later. L - 1 = 5 steps have a next id, so the last window is short:

        window 0            window 1            window 2
        x        y          x        y          x        y
        a g m s  b h n t    c i o u  d j p v    e k q w  f l r x
        b h n t  c i o u    d j p v  e k q w

A training loop:

    state = None
    for x, y in BPTTBatches(corpus.train, batch_size=20, bptt=35):
        state = detach_state(state)      # keep the values, cut the graph
        logits, state = model(x, state)  # x, y: (T, B) -> logits (T, B, V)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import RnnkitError


class BPTTBatches:
    """The windows of one pass over `ids` (a 1-D sequence of N token ids).

    Arguments:
        ids: a 1-D numpy array or memmap, or a torch tensor, of N >= batch_size * (bptt + 1) ids.
        batch_size: B, the number of parallel streams.
        bptt: T, the steps per window (the last window of an epoch may be shorter).
        device: where the windows go.
        name: what `ids` is, for the message when they are too few (e.g. "valid split").
        shard: (k, n): only the k-th of n equal parts of the streams, the share of process k of
            n training together; `batch_size` then counts the streams of this part.

    A memmap stays on disk and each window is read and converted when asked for; anything else is
    converted once into a (L, B) LongTensor on `device`, of which every window is a view.
    """

    def __init__(
        self,
        ids: np.ndarray | Tensor,
        batch_size: int,
        bptt: int,
        device: torch.device | str | None = None,
        name: str = "corpus",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        for arg, value in (("batch_size", batch_size), ("bptt", bptt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RnnkitError(f"{arg} must be a positive integer, got {value!r}")
        part, parts = shard
        if batch_size % parts or not 0 <= part < parts:
            raise ValueError(f"shard {part} of {parts} does not cut batch_size {batch_size} into equal parts")
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        n, need = len(ids), batch_size * (bptt + 1)
        if n < need:
            raise RnnkitError(
                f"the {name} has {n} tokens, too few for one batch: "
                f"batch_size {batch_size} x (bptt {bptt} + 1) needs at least {need}"
            )
        self.batch_size, self.bptt, self.device = batch_size // parts, bptt, device
        self.steps = n // batch_size  # L, the length of each stream
        size = self.batch_size * self.steps
        kept = ids[part * size : (part + 1) * size]  # this shard's streams, one after another
        if isinstance(ids, np.memmap):
            self._streams: Any = kept.reshape(self.batch_size, self.steps)  # (B, L), still on disk
            self._data: Tensor | None = None
        else:
            data = kept if isinstance(kept, Tensor) else torch.from_numpy(np.asarray(kept).astype(np.int64))
            self._streams = None
            data = data.to(device=device, dtype=torch.long).view(self.batch_size, self.steps)  # (B, L)
            self._data = data.t().contiguous()  # (L, B)

    def __len__(self) -> int:
        """Windows per epoch: ceil((L - 1) / bptt)."""
        return -(-(self.steps - 1) // self.bptt)

    def window(self, i: int) -> tuple[Tensor, Tensor]:
        """Window i: inputs x and targets y, LongTensors of shape (T, B) with y[t] = the id after x[t]."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} is outside [0, {len(self)})")
        start = i * self.bptt
        end = min(start + self.bptt, self.steps - 1)
        if self._data is not None:
            return self._data[start:end], self._data[start + 1 : end + 1]
        block = torch.from_numpy(np.ascontiguousarray(self._streams[:, start : end + 1].T, dtype=np.int64))  # (T+1, B)
        if torch.device(self.device or "cpu").type == "cuda":
            # from pinned memory the copy is asynchronous: the host queues the next step instead of
            # waiting for the GPU to finish this one
            block = block.pin_memory().to(self.device, non_blocking=True)
        else:
            block = block.to(self.device)
        return block[:-1], block[1:]

    __getitem__ = window  # a Sequence of windows, as the training loop takes its batches

    def iter_from(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The windows start, start + 1, ..., len - 1: resumes an epoch part-way through."""
        if not 0 <= start <= len(self):
            raise IndexError(f"start {start} is outside [0, {len(self)}]")
        for i in range(start, len(self)):
            yield self.window(i)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def __repr__(self) -> str:
        return f"BPTTBatches(batch_size={self.batch_size}, bptt={self.bptt}, windows={len(self)})"


def detach_state(state: Any) -> Any:
    """The same state (None, a tensor, or nested tuples of them, e.g. LSTM's (h, c)) cut from the
    graph of the window before."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
