"""rnnkit.nn.functional against torch.nn.functional, and the allocator setting: the same functions,
the same distributions, the pages they save."""

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from rnnkit.nn.functional import cross_entropy, dropout


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), v=st.integers(2, 60), spread=st.sampled_from([0.1, 3.0, 50.0]), seed=st.integers(0, 2**16))
def test_cross_entropy_equals_torch_in_float64(n, v, spread, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g, dtype=torch.float64) * spread).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    ours = cross_entropy(logits, targets)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, targets)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours_grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_cross_entropy_gradcheck_and_underflow():
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 8, 1, 1, 5])
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, targets), (logits,))
    # a target whose probability underflows (exp(-2000)): the loss is still exact, not inf
    far = torch.zeros(2, 4, dtype=torch.float64)
    far[:, 0] = 2000.0
    assert math.isclose(float(cross_entropy(far, torch.tensor([1, 0]))), float(F.cross_entropy(far, torch.tensor([1, 0]))))
    assert math.isclose(float(cross_entropy(far.float(), torch.tensor([1, 1]))), 2000.0 + math.log(1 + 3 * math.exp(-2000)), rel_tol=1e-6)


def test_cross_entropy_in_bf16_autocast_differentiates_into_bf16():
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    w = torch.randn(32, 500, requires_grad=True)
    targets = torch.randint(0, 500, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = x @ w
        ours = cross_entropy(logits, targets)
        ref = F.cross_entropy(logits, targets)  # autocast runs it in float32 from the same bf16 logits
    assert logits.dtype == torch.bfloat16 and ours.dtype == torch.float32
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-6)
    (ours_grad,) = torch.autograd.grad(ours, w, retain_graph=True)
    (ref_grad,) = torch.autograd.grad(ref, w)
    assert ours_grad.dtype == torch.float32
    # both round a float32 gradient of the logits to bf16 on its way back (ours rounds twice)
    assert torch.allclose(ours_grad, ref_grad, rtol=0.02, atol=0.02 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drops_a_fraction_p_and_keeps_the_mean(p):
    torch.manual_seed(1)
    x = torch.full((400, 500), 2.0)
    y = dropout(x, p)
    n = x.numel()
    dropped = float((y == 0).float().mean())
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations of a binomial
    assert set(torch.unique(y).tolist()) <= {0.0, float(y.max())}
    assert abs(float(y.mean()) - 2.0) < 5 * 2.0 * math.sqrt(p / (1 - p) / n)


def test_dropout_gradient_locked_masks_and_identities():
    torch.manual_seed(2)
    x = torch.randn(7, 5, 6, requires_grad=True)
    y = dropout(x, 0.3)
    (grad,) = torch.autograd.grad(y.sum(), x)
    # d y / d x is the mask scaled by 1 / keep: 0 where y was dropped, one value elsewhere
    assert torch.equal(grad != 0, y != 0) and len(torch.unique(grad)) == 2
    assert torch.allclose(y, x * grad)
    locked = dropout(torch.ones(7, 5, 6), 0.5, mask_shape=(1, 5, 6))
    assert torch.equal(locked, locked[:1].expand_as(locked)) and bool((locked == 0).any())
    rows = dropout(torch.ones(50, 4), 0.5, mask_shape=(50, 1))
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(3)
    first = dropout(torch.ones(1000), 0.5)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(torch.ones(1000), 0.5))  # the global generator's seed decides


def test_dropout_keeps_the_dtype_under_autocast():
    x = torch.randn(4, 8).bfloat16()
    assert dropout(x, 0.5).dtype == torch.bfloat16


_FAULTS = """
import resource, torch
from rnnkit.allocator import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first = faults()
took = keep_freed_memory()
faults()
print(first, took, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_reuses_pages():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()
    first, took, kept = int(out[0]), out[1] == "True", int(out[2])
    if not took:
        pytest.skip("not glibc")
    # before, each 64 MiB block is a fresh mapping whose pages fault in; after, the freed block is reused
    assert kept * 10 < first, (first, kept)
