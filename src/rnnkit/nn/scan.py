"""Linear recurrences over a whole sequence at once: h_t = a_t * h_{t-1} + b_t.

minGRU and minLSTM (Feng et al. 2024) compute a_t and b_t from x_t alone, so their recurrence is
this one, elementwise, and needs no matrix product between steps. `linear_scan` computes it for
all T steps with one of three methods, and its gradient with the same method run backwards in time
(the gradient of a linear recurrence is a linear recurrence, section "backward" below):

    "chunked"   Hillis-Steele within chunks of `chunk` steps (log2(chunk) rounds of
                b[k:] += a[k:] * b[:-k], a[k:] *= a[:-k]), one step from chunk to chunk. No division
                and no logarithm: as exact as the step loop. chunk = 1 is the step loop itself.
                Memory beyond h: one chunk.
    "blocked"   the same arithmetic, in three phases: Hillis-Steele in every chunk at once, the
                step loop over the T / chunk chunk ends, then every h_t from its chunk's start.
                About log2(chunk) + T / chunk operations on whole tensors instead of T / chunk
                times log2(chunk): few kernel launches, for a GPU. Memory beyond h: a and b again.
    "log"       Heinsen (2023): h_t = exp(A_t) (h_0 + sum_k exp(log b_k - A_k)), A_t = sum log a,
                with logcumsumexp; b is split into its positive and negative parts, each scanned.
                Fully parallel over T, but exp/log on every element, and less exact in float32.

Which is faster depends on the device (`benchmarks/scan.py` measures both). On a CPU the B x H
elements of one step already keep the cores busy and a step costs a few microseconds, so the step
loop (chunked, chunk 1) is the fastest there: 73 ms forward for T = 1024, B = 64, H = 512 on two
cores, against 157 ms for chunks of 16 and 3.5 s for the log-space scan. `DEFAULTS` holds the
choice per device type.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import ParameterError

METHODS = ("chunked", "blocked", "log")
# per device type: (method, chunk). The CUDA choice is not yet measured (no GPU was lent for it):
# the blocked scan over chunks of 64 steps, the usual shape of a scan on a GPU.
DEFAULTS = {"cpu": ("chunked", 1), "cuda": ("blocked", 64)}


def _chunked(a: Tensor, b: Tensor, h0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """h (T, B, H) from a, b (T, B, H) and h0 (B, H): Hillis-Steele inside each chunk, carried
    across. reverse: h_t = a_t h_{t+1} + b_t from t = T-1 down, h0 standing for h_T."""
    T = a.shape[0]
    h = torch.empty_like(b)
    prev = h0
    if chunk == 1:
        for t in range(T - 1, -1, -1) if reverse else range(T):
            prev = torch.addcmul(b[t], a[t], prev, out=h[t])  # h_t = a_t h_{t-1} + b_t
        return h
    starts = range(0, T, chunk)
    for start in reversed(starts) if reverse else starts:
        A, B = a[start : start + chunk], b[start : start + chunk]  # (C, B, H)
        A, B = (A.flip(0), B.flip(0)) if reverse else (A.clone(), B.clone())  # copies: one chunk
        k = 1
        while k < A.shape[0]:  # after the round for k, (A_t, B_t) combine steps t-2k+1 .. t
            B[k:] = torch.addcmul(B[k:], A[k:], B[:-k])
            A[k:] = A[k:] * A[:-k]
            k *= 2
        out = torch.addcmul(B, A, prev)
        h[start : start + A.shape[0]] = out.flip(0) if reverse else out
        prev = out[-1]
    return h


def _blocked(a: Tensor, b: Tensor, h0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """The chunked scan's arithmetic with every chunk at once; see `_chunked` for the arguments."""
    if reverse:
        return _blocked(a.flip(0), b.flip(0), h0, chunk).flip(0)
    T, rest = a.shape[0], a.shape[1:]
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T  # identity steps (a = 1, b = 0) fill the last chunk
    A = torch.cat([a, a.new_ones((pad, *rest))]) if pad else a.clone()
    B = torch.cat([b, b.new_zeros((pad, *rest))]) if pad else b.clone()
    A, B = A.view(n, C, *rest), B.view(n, C, *rest)  # (n, C, B, H)
    k = 1
    while k < C:  # afterwards h at step c of chunk j is A[j, c] * (the state entering chunk j) + B[j, c]
        B[:, k:] = torch.addcmul(B[:, k:], A[:, k:], B[:, :-k])
        A[:, k:] = A[:, k:] * A[:, :-k]
        k *= 2
    ends = _chunked(A[:, -1], B[:, -1], h0, 1)  # (n, B, H): the state leaving each chunk
    starts = torch.cat([h0[None], ends[:-1]])  # (n, B, H): the state entering each chunk
    return torch.addcmul(B, A, starts[:, None]).view(n * C, *rest)[:T]


def _log(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Heinsen's log-space scan; b and h0 split into positive and negative parts."""
    if reverse:
        return _log(a.flip(0), b.flip(0), h0).flip(0)
    # a gate that underflowed to 0 would make log a = -inf and A - A undefined: the smallest normal
    # number instead, whose log (-87 in float32) ends the memory as surely
    log_a = torch.log(a.clamp_min(torch.finfo(a.dtype).tiny))
    A = torch.cat([torch.zeros_like(a[:1]), torch.cumsum(log_a, 0)])  # (T + 1, B, H): A_0 = 0

    def positive(values: Tensor, start: Tensor) -> Tensor:  # the scan of max(values, 0) from max(start, 0)
        logs = torch.log(torch.cat([start[None], values]).clamp_min(0))  # log 0 = -inf: no contribution
        return torch.exp(A + torch.logcumsumexp(logs - A, 0))[1:]

    return positive(b, h0) - positive(-b, -h0)


def _run(a: Tensor, b: Tensor, h0: Tensor, method: str, chunk: int, reverse: bool = False) -> Tensor:
    if method == "log":
        return _log(a, b, h0, reverse)
    return (_chunked if method == "chunked" else _blocked)(a, b, h0, chunk, reverse)


class LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0) with its gradient, keeping only a, h0 and h for the backward pass.

    backward: with g_t = dL/dh_t in all (from h_t itself and through h_{t+1}),
        g_t = dL/dh_t(direct) + a_{t+1} g_{t+1}            the same recurrence, backwards in time
        dL/db_t = g_t,  dL/da_t = g_t h_{t-1},  dL/dh_0 = a_0 g_0     (h_{-1} = h0)
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor, method: str, chunk: int) -> Tensor:  # type: ignore[override]
        h = _run(a, b, h0, method, chunk)
        ctx.save_for_backward(a, h0, h)
        ctx.method, ctx.chunk = method, chunk
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, h0, h = ctx.saved_tensors
        g = torch.empty_like(grad)  # (T, B, H)
        g[-1] = grad[-1]
        if len(g) > 1:  # g_t = grad_t + a_{t+1} g_{t+1}, from T-2 down, without copying a or grad
            g[:-1] = _run(a[1:], grad[:-1], g[-1], ctx.method, ctx.chunk, reverse=True)
        da = torch.empty_like(a)  # dL/da_t = g_t h_{t-1}
        torch.mul(g[0], h0, out=da[0])
        torch.mul(g[1:], h[:-1], out=da[1:])
        return da, g, a[0] * g[0], None, None


def linear_scan(
    a: Tensor, b: Tensor, h0: Tensor, method: str | None = None, chunk: int | None = None
) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0 .. T-1, with h_{-1} = h0: a, b (T, B, H), h0 (B, H) -> h
    (T, B, H). `method` and `chunk` default to `DEFAULTS` for the device."""
    default_method, default_chunk = DEFAULTS.get(a.device.type, DEFAULTS["cuda"])
    method = default_method if method is None else method
    chunk = default_chunk if chunk is None else chunk
    if method not in METHODS:
        raise ParameterError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ParameterError("chunk", f"must be a positive integer, got {chunk!r}")
    return LinearScan.apply(a, b, h0, method, chunk)
