"""Recurrent: a stack of cells unrolled over time, with two backends that compute the same function.

    x_1 ... x_T -> [layer 1: cell, cell, ..., cell] -> dropout -> [layer 2] -> ... -> outputs
                     state_0 ->  ->  ->  -> state_T        (reversed in time for direction 2)

`backend="fused"` hands the cells' own parameter tensors to PyTorch's fused RNN kernels (cuDNN
on a GPU, ATen/oneDNN on a CPU). `backend="reference"` is the readable loop over `cell(x_t, state)`
and can also return every state at every step (`trace`). Tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, _VF, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .cells import Cell, ElmanCell, State, cell_class, make_cell

BACKENDS = ("auto", "fused", "reference")
_FUSED = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "LSTM": _VF.lstm, "GRU": _VF.gru}
_TORCH_NAMES = {nn.RNN: "elman", nn.LSTM: "lstm", nn.GRU: "gru"}


class Trace(NamedTuple):
    """What the reference backend saw at every step.

    outputs, state: as returned by `Recurrent.forward`.
    steps: steps[k][t] is the state of layer-direction k (k = layer * D + direction) after
        reading time step t, h (B, H) or (h, c); these are the very tensors of the graph, so
        `torch.autograd.grad(loss, steps[k][t])` gives dL/dh_t.
    """

    outputs: Tensor
    state: State
    steps: tuple[tuple[State, ...], ...]

    def hidden(self) -> Tensor:
        """Every h as one tensor: (T, L*D, B, H)."""
        return torch.stack(
            [torch.stack([s[0] if isinstance(s, tuple) else s for s in ks]) for ks in self.steps], dim=1
        )


class Recurrent(nn.Module):
    """A multi-layer, optionally bidirectional recurrent network built from a registered cell.

    Arguments:
        cell: "elman", "lstm" or "gru".
        input_size: E.  hidden_size: H.  num_layers: L.
        dropout: dropout on the outputs of every layer but the last (as torch.nn does), in training.
        bidirectional: run a second stack of cells backwards in time (D = 2) and concatenate.
        batch_first: x and outputs are (B, T, .) instead of (T, B, .); states are not affected.
        backend: "fused", "reference", or "auto" (fused, except in `trace`).
        **cell_options: passed to every cell (nonlinearity, bias, forget_bias).

    Shapes: x (T, B, E) -> outputs (T, B, D*H); state h (L*D, B, H), or (h, c) for LSTM.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        batch_first: bool = False,
        backend: str = "auto",
        **cell_options: Any,
    ) -> None:
        super().__init__()
        cell_class(cell)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.backend = backend
        self.cell_options = dict(cell_options)
        D = self.num_directions
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if layer == 0 else D * hidden_size, hidden_size, **cell_options)
            for layer in range(num_layers)
            for _ in range(D)
        )

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def mode(self) -> str:
        return self.cells[0].mode

    @property
    def bias(self) -> bool:
        return self.cells[0].bias

    @property
    def has_cell_state(self) -> bool:
        return self.cells[0].has_cell_state

    def extra_repr(self) -> str:
        return (
            f"{self.cell!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"dropout={self.dropout}, bidirectional={self.bidirectional}, "
            f"batch_first={self.batch_first}, backend={self.backend!r}"
        )

    # ---------------------------------------------------------------- state and input checks

    def init_state(self, batch_size: int) -> State:
        """The zero state: h (L*D, B, H), or (h, c) for LSTM."""
        h = self.cells[0].U.new_zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size)
        return (h, h.clone()) if self.has_cell_state else h

    def _prepare(
        self, x: Tensor, state: State | None, lengths: Tensor | Sequence[int] | None
    ) -> tuple[Tensor, State, Tensor | None]:
        """Check the arguments; return x as (T, B, E), the state, and lengths as int64 on x's device."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        layout = "(B, T, E)" if self.batch_first else "(T, B, E)"
        if x.dim() != 3:
            raise ValueError(f"x must have 3 dimensions {layout}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have feature size E={self.input_size} in its last dimension, got shape {tuple(x.shape)}"
            )
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, E)
        T, B = x.shape[0], x.shape[1]
        if T == 0 or B == 0:
            raise ValueError(f"x must have at least one time step and one sequence, got shape {tuple(x.shape)}")
        state = self.init_state(B) if state is None else state
        self._check_state(state, B)
        if lengths is not None:
            lengths = self._check_lengths(lengths, T, B).to(x.device)
        return x, state, lengths

    def _check_state(self, state: State, B: int) -> None:
        want = (self.num_layers * self.num_directions, B, self.hidden_size)
        if self.has_cell_state:
            if not (isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, Tensor) for s in state)):
                raise TypeError(f"an LSTM state must be a tuple (h, c) of tensors, got {type(state).__name__}")
            parts = state
        else:
            if not isinstance(state, Tensor):
                raise TypeError(f"a {self.cell} state must be a tensor h, got {type(state).__name__}")
            parts = (state,)
        for part in parts:
            if tuple(part.shape) != want:
                raise ValueError(
                    f"state must have shape (L*D, B, H) = {want}, got {tuple(part.shape)}"
                )

    @staticmethod
    def _check_lengths(lengths: Tensor | Sequence[int], T: int, B: int) -> Tensor:
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must lie in [1, T={T}], got values from {lo} to {hi}")
        return lengths.long()

    # ---------------------------------------------------------------- forward

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | Sequence[int] | None = None
    ) -> tuple[Tensor, State]:
        """Run the network over x; return (outputs, final state).

        With `lengths`, outputs past each sequence's end are zero and the final state is each
        sequence's state at its own last step (for the backward direction: after reading the
        sequence from its last valid step down to step 0).
        """
        x, state, lengths = self._prepare(x, state, lengths)
        if self.backend == "reference":
            outputs, state, _ = self._reference(x, state, lengths, keep_steps=False)
        else:
            outputs, state = self._fused(x, state, lengths)
        return (outputs.transpose(0, 1) if self.batch_first else outputs), state

    def trace(
        self, x: Tensor, state: State | None = None, lengths: Tensor | Sequence[int] | None = None
    ) -> Trace:
        """Like `forward`, through the reference loop, and also return every state at every step."""
        if self.backend == "fused":
            raise ValueError("trace needs the reference loop: use backend='reference' or 'auto', not 'fused'")
        x, state, lengths = self._prepare(x, state, lengths)
        outputs, state, steps = self._reference(x, state, lengths, keep_steps=True)
        return Trace(outputs.transpose(0, 1) if self.batch_first else outputs, state, steps)

    def flat_weights(self) -> list[Tensor]:
        """Every cell's weights in the fused kernels' order: per layer, per direction, 2 or 4 tensors."""
        return [w for cell in self.cells for w in cell.flat_weights()]

    def _fused(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        kernel = _FUSED[self.mode]
        args = (self.flat_weights(), self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if lengths is None:
            result = kernel(x, state, *args, False)
            return result[0], (result[1], result[2]) if self.has_cell_state else result[1]
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        # the kernel reads sequences longest first: permute the state to that order and back
        if self.has_cell_state:
            state = (state[0].index_select(1, order), state[1].index_select(1, order))
        else:
            state = state.index_select(1, order)
        result = kernel(packed.data, packed.batch_sizes, state, *args)
        out = PackedSequence(result[0], packed.batch_sizes, order, unorder)
        outputs, _ = pad_packed_sequence(out, total_length=x.shape[0])  # (T, B, D*H)
        if self.has_cell_state:
            return outputs, (result[1].index_select(1, unorder), result[2].index_select(1, unorder))
        return outputs, result[1].index_select(1, unorder)

    def _reference(
        self, x: Tensor, state: State, lengths: Tensor | None, keep_steps: bool
    ) -> tuple[Tensor, State, tuple[tuple[State, ...], ...]]:
        T = x.shape[0]
        D = self.num_directions
        # valid[t, b]: step t lies inside sequence b; past the end the state is held, the output is 0
        valid = None if lengths is None else (torch.arange(T, device=x.device)[:, None] < lengths)[..., None]
        layer_input, finals, steps = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                cell: Cell = self.cells[k]
                s = (state[0][k], state[1][k]) if self.has_cell_state else state[k]
                hs: list[Any] = [None] * T
                kept: list[Any] = [None] * T
                for t in range(T) if direction == 0 else range(T - 1, -1, -1):
                    h, new = cell(layer_input[t], s)
                    if valid is not None:
                        h = torch.where(valid[t], h, torch.zeros_like(h))
                        new = _where(valid[t], new, s)
                    s, hs[t], kept[t] = new, h, new
                outputs.append(torch.stack(hs))  # (T, B, H)
                finals.append(s)
                if keep_steps:
                    steps.append(tuple(kept))
            layer_input = torch.cat(outputs, dim=-1) if D == 2 else outputs[0]  # (T, B, D*H)
            if layer < self.num_layers - 1 and self.dropout > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
        if self.has_cell_state:
            final: State = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
        else:
            final = torch.stack(finals)  # (L*D, B, H)
        return layer_input, final, tuple(steps)

    # ---------------------------------------------------------------- cuDNN's flat weight buffer

    def _apply(self, fn: Any, recurse: bool = True) -> "Recurrent":
        result = super()._apply(fn, recurse)
        self.flatten_parameters()
        return result

    def flatten_parameters(self) -> None:
        """On a GPU, make all weights views of one contiguous buffer, the layout cuDNN reads.

        The parameters stay the same objects (cells, optimisers and state_dict see no change);
        only their storage moves, so the fused kernel neither copies them nor warns. A no-op on
        a CPU.
        """
        weights = self.flat_weights()
        first = weights[0]
        if not (
            first.is_cuda
            and torch.backends.cudnn.is_acceptable(first)
            and torch._use_cudnn_rnn_flatten_weight()
            and all(w.dtype == first.dtype and w.is_cuda for w in weights)
            and len({w.data_ptr() for w in weights}) == len(weights)
        ):
            return
        from torch.backends.cudnn import rnn as cudnn_rnn

        with torch.cuda.device_of(first), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(
                weights, 4 if self.bias else 2, self.input_size, cudnn_rnn.get_cudnn_mode(self.mode),
                self.hidden_size, 0, self.num_layers, self.batch_first, self.bidirectional,
            )

    # ---------------------------------------------------------------- torch.nn interop

    @classmethod
    def from_torch(cls, module: nn.RNNBase, backend: str = "auto") -> "Recurrent":
        """A Recurrent with the weights (copied) and configuration of a torch.nn.RNN, LSTM or GRU.

        An nn.RNN's two biases become the Elman cell's single b = bias_ih + bias_hh.
        """
        name = _TORCH_NAMES.get(type(module))
        if name is None:
            raise TypeError(f"from_torch expects torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"LSTM projections are not supported, got proj_size={module.proj_size}")
        options: dict[str, Any] = {"bias": module.bias}
        if name == "elman":
            options["nonlinearity"] = module.nonlinearity
        first = module.weight_ih_l0
        rec = cls(
            name, module.input_size, module.hidden_size, module.num_layers, module.dropout,
            module.bidirectional, module.batch_first, backend, **options,
        ).to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for (ours, theirs) in zip(rec.cells, _torch_weights(module)):
                ours.U.copy_(theirs[0])
                ours.W.copy_(theirs[1])
                if module.bias and isinstance(ours, ElmanCell):
                    ours.b.copy_(theirs[2] + theirs[3])
                elif module.bias:
                    ours.b_U.copy_(theirs[2])
                    ours.b_W.copy_(theirs[3])
        return rec

    def to_torch(self) -> nn.RNNBase:
        """The equivalent torch.nn.RNN, LSTM or GRU, with these weights copied in."""
        kwargs: dict[str, Any] = dict(
            num_layers=self.num_layers, bias=self.bias, dropout=self.dropout,
            bidirectional=self.bidirectional, batch_first=self.batch_first,
        )
        if self.cell == "elman":
            kwargs["nonlinearity"] = self.cells[0].nonlinearity
        module_class = {v: k for k, v in _TORCH_NAMES.items()}[self.cell]
        first = self.cells[0].U
        module = module_class(self.input_size, self.hidden_size, **kwargs).to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for ours, theirs in zip(self.cells, _torch_weights(module)):
                for src, dst in zip(ours.flat_weights(), theirs):
                    dst.copy_(src)
        module.flatten_parameters()
        return module


def _torch_weights(module: nn.RNNBase) -> list[list[Tensor]]:
    """A torch.nn RNN's weights per layer-direction: [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
    per = 4 if module.bias else 2
    flat = module._flat_weights
    return [flat[i : i + per] for i in range(0, len(flat), per)]


def _where(keep: Tensor, new: State, old: State) -> State:
    if isinstance(new, tuple):
        return (torch.where(keep, new[0], old[0]), torch.where(keep, new[1], old[1]))
    return torch.where(keep, new, old)
