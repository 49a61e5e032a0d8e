"""On a GPU: the fused backend reads the cells' own tensors from cuDNN's flat buffer, with no
copy and no warning (pytest turns the "not part of a single contiguous chunk" warning into an
error), and still equals the reference loop."""

import pytest
import torch

from rnnkit import Recurrent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-9)])
def test_cuda_fused_equals_reference_without_copies(cell, dtype, tol, monkeypatch):
    # cuDNN rounds float32 RNN matmuls to TF32 by default (about 1e-3): compare at full precision
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    rec = Recurrent(cell, 6, 8, num_layers=2, bidirectional=True).to("cuda", dtype)
    weights = rec.flat_weights()
    if dtype == torch.float32:  # cuDNN's layout: every weight is a view of one buffer
        base = weights[0].untyped_storage().data_ptr()
        assert all(w.untyped_storage().data_ptr() == base for w in weights)
    x = torch.randn(7, 3, 6, device="cuda", dtype=dtype)
    results = []
    for backend in ("fused", "reference"):
        rec.backend = backend
        rec.zero_grad()
        out, _ = rec(x, lengths=torch.tensor([7, 3, 5]))
        out.pow(2).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in rec.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_cuda_weights_stay_flat_after_load_and_optimiser_steps():
    rec = Recurrent("lstm", 4, 4, num_layers=2).cuda()
    rec.load_state_dict(Recurrent("lstm", 4, 4, num_layers=2).state_dict())
    opt = torch.optim.SGD(rec.parameters(), lr=0.1)
    x = torch.randn(5, 2, 4, device="cuda")
    for _ in range(2):
        opt.zero_grad()
        rec(x)[0].sum().backward()
        opt.step()
    base = rec.flat_weights()[0].untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == base for w in rec.flat_weights())


def test_cuda_windows_from_a_memmap_equal_those_read_on_the_cpu(tmp_path):
    import numpy as np

    from rnnkit.data import BPTTBatches

    path = tmp_path / "ids.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    gpu, cpu = BPTTBatches(ids, 4, 7, "cuda"), BPTTBatches(ids, 4, 7, "cpu")
    for (xg, yg), (xc, yc) in zip(gpu, cpu):  # the asynchronous copies land before they are read
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
