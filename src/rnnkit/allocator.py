"""Keep freed memory in the process, for the next training step or prediction to reuse.

glibc's malloc serves a large block (above 128 KiB to 32 MiB, as it adapts) with a fresh mmap and
gives it back to the kernel when it is freed, and trims the top of its heap when 128 KiB or more
of it is free. A training step frees and allocates the same large tensors every time (logits of
N x V, the recurrent kernel's scratch), so every step touches new pages, and the kernel zeroes each
on its first touch: on the 2-core Xeon here that was a sixth of a word model's step (2x300 LSTM,
V 10,000, bf16: 9,400 -> 11,000 tokens/s kept) and a quarter of a character model's (2x768:
13,500 -> 17,500). PyTorch's CPU tuning guide points at the same cost and swaps the allocator; this
sets glibc's own thresholds instead (`mallopt`), so that freed blocks stay mapped. The process
then holds its peak memory until it ends, as a caching allocator would.
"""

from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, <malloc.h>
_LARGEST = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB come from the heap and stay there


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse: no mmap below 2 GiB, no trimming of the
    heap. True where it took (glibc), False elsewhere, where nothing changes. Called by `rnnkit`'s
    commands at their start and by the training loop on a CPU; once per process."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
