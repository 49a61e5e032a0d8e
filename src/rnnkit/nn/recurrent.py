"""Recurrent: a stack of cells unrolled over time, with two backends that compute the same function.

    x_1 ... x_T -> [layer 1: cell, cell, ..., cell] -> dropout -> [layer 2] -> ... -> outputs
                     state_0 ->  ->  ->  -> state_T        (reversed in time for direction 2)

`backend="fused"` hands the cells' own parameter tensors to PyTorch's fused RNN kernels (cuDNN
on a GPU, ATen/oneDNN on a CPU). `backend="scan"` runs a cell whose recurrence is linear (minGRU,
minLSTM: `ScanCell`) over the whole sequence at once (`rnnkit.nn.scan`). `backend="reference"` is
the readable loop over `cell(x_t, state)` and can also return every state at every step (`trace`).
Tests hold them equal. `"auto"` takes the fused kernel where the cell has one, the scan where it
has one, and the loop otherwise (a cell registered by a user).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ParameterError
from .cells import Cell, ElmanCell, ScanCell, State, make_cell
from .functional import dropout

BACKENDS = ("auto", "fused", "scan", "reference")
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
        cell: the name of a registered cell: "elman", "lstm", "gru", or one of the user's.
        input_size: E.  hidden_size: H.  num_layers: L.
        dropout: dropout on the outputs of every layer but the last (as torch.nn does), in training.
        variational: use one dropout mask for all time steps of a sequence (locked dropout,
            Gal & Ghahramani 2016) instead of a fresh mask at every step.
        weight_drop: DropConnect on every recurrent matrix W in training (Merity et al. 2017,
            section 2): one mask per forward call, shared by all time steps.
        bidirectional: run a second stack of cells backwards in time (D = 2) and concatenate.
        batch_first: x and outputs are (B, T, .) instead of (T, B, .); states are not affected.
        backend: "fused", "scan", "reference", or "auto" (fused where the cell has a kernel, the scan
            for a ScanCell, the reference loop otherwise; `trace` always loops).
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
        variational: bool = False,
        weight_drop: float = 0.0,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        for name, p in (("dropout", dropout), ("weight_drop", weight_drop)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
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
        self.variational = bool(variational)
        self.weight_drop = float(weight_drop)
        D = self.num_directions
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if layer == 0 else D * hidden_size, hidden_size, **cell_options)
            for layer in range(num_layers)
            for _ in range(D)
        )
        if backend == "fused" and not self.has_kernel:
            raise ValueError(f"cell {cell!r} has no fused kernel: use backend='reference' or 'auto'")
        if backend == "scan" and not self.has_scan:
            raise ValueError(f"cell {cell!r} is not a linear recurrence to scan: use backend='reference' or 'auto'")
        if weight_drop > 0 and not isinstance(getattr(self.cells[0], "W", None), nn.Parameter):
            raise ParameterError("weight_drop", f"needs a cell with a recurrent matrix W, and {cell!r} has none")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def mode(self) -> str | None:
        return self.cells[0].mode

    @property
    def has_kernel(self) -> bool:
        """Whether PyTorch has a fused kernel for this cell."""
        return self.mode in _FUSED

    @property
    def has_scan(self) -> bool:
        """Whether the cell's recurrence is linear, to be scanned over the whole sequence."""
        return isinstance(self.cells[0], ScanCell)

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
            f"batch_first={self.batch_first}, backend={self.backend!r}, variational={self.variational}, "
            f"weight_drop={self.weight_drop}"
        )

    # ---------------------------------------------------------------- state and input checks

    def init_state(self, batch_size: int) -> State:
        """The zero state: h (L*D, B, H), or (h, c) for LSTM."""
        shape = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        ref = next(self.parameters(), None)
        h = torch.zeros(shape) if ref is None else ref.new_zeros(shape)
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
        if self.backend in ("auto", "fused") and self.has_kernel:
            outputs, state = self._fused(x, state, lengths)
        elif self.backend in ("auto", "scan") and self.has_scan:
            outputs, state = self._scan(x, state, lengths)
        else:
            outputs, state, _ = self._reference(x, state, lengths, keep_steps=False)
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

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step of every layer: x_t (B, E) and the state (L, B, H) (or (h, c)) ->
        (h_t of the last layer (B, H), the new state). Equal to `forward` on a sequence of one step,
        dropout included in training; for a unidirectional network only (a backward direction
        needs the whole sequence).

        On a CPU this is also the faster way to run one step of an LSTM: oneDNN's fused kernel
        copies each weight matrix into a layout of its own at every call, which for a single
        token costs more than the step (2x650: about 80 tokens/s through the kernel, 230 here)."""
        if self.bidirectional:
            raise ValueError("step reads one time step forwards; a bidirectional network needs the whole sequence")
        if x.dim() != 2 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, E={self.input_size}), got {tuple(x.shape)}")
        self._check_state(state, x.shape[0])
        dropped_W = self._dropped_W()
        finals = []
        for k, cell in enumerate(self.cells):
            step = cell if dropped_W[k] is None else partial(_with_W, cell, dropped_W[k])
            x, s = step(x, (state[0][k], state[1][k]) if self.has_cell_state else state[k])
            finals.append(s)
            if k < self.num_layers - 1 and self.dropout > 0:
                x = self._between_layers(x, (x.shape[0], x.shape[-1]))
        if self.has_cell_state:
            return x, (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
        return x, torch.stack(finals)  # (L, B, H)

    def flat_weights(self) -> list[Tensor]:
        """Every cell's weights in the fused kernels' order: per layer, per direction, 2 or 4 tensors."""
        return [w for cell in self.cells for w in cell.flat_weights()]

    def _dropped_W(self) -> list[Tensor | None]:
        """Per cell, W with DropConnect applied (in training with weight_drop > 0), else None."""
        if not (self.training and self.weight_drop > 0):
            return [None] * len(self.cells)
        return [dropout(cell.W, self.weight_drop) for cell in self.cells]

    def _between_layers(self, h: Tensor, mask_shape: tuple[int, ...]) -> Tensor:
        """Dropout on a layer's output before the next layer; with `variational`, mask_shape
        broadcasts one mask over time."""
        return dropout(h, self.dropout, self.training, mask_shape if self.variational else None)

    def _fused(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        kernel = _FUSED[self.mode]
        weights = []
        for cell, W in zip(self.cells, self._dropped_W()):
            w = cell.flat_weights()
            weights += w if W is None else [w[0], W, *w[2:]]
        T, B, D, L = x.shape[0], x.shape[1], self.num_directions, self.num_layers
        if lengths is not None and x.device.type == "cpu" and not self.has_cell_state:
            # ATen runs a packed batch through a slow generic loop on a CPU (3 bidirectional GRU
            # layers of 160, T 150, B 32, forward and backward: 0.99 s packed, 0.45 s padded layer by
            # layer here); a state that is h alone can be read off the outputs, an LSTM's c cannot
            per_cell = len(weights) // len(self.cells)
            return self._layerwise(x, state, lengths, lambda k, seq, h0, valid: kernel(
                seq, h0[None], weights[k * per_cell : (k + 1) * per_cell], self.bias, 1, 0.0,
                self.training, False, False)[0])
        per_layer = len(weights) // L
        packed = None
        if lengths is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            order = packed.sorted_indices
            # the kernel reads sequences longest first: permute the state to that order and back
            state = tuple(s.index_select(1, order) for s in state) if self.has_cell_state else state.index_select(1, order)
            x = packed.data  # (sum of lengths, E)
        # One kernel call for all layers, unless this layer's dropout goes between them: locked
        # masks, or any mask on a CPU, where the kernel's own draws cost 2-3x as much (nn.functional)
        split = self.training and self.dropout > 0 and L > 1 and (self.variational or x.device.type == "cpu")
        groups = [(layer, layer + 1) for layer in range(L)] if split else [(0, L)]
        finals: list[list[Tensor]] = []
        for first, last in groups:
            hx = tuple(s[first * D : last * D] for s in state) if self.has_cell_state else state[first * D : last * D]
            args = (weights[first * per_layer : last * per_layer], self.bias, last - first,
                    0.0 if split else self.dropout, self.training, self.bidirectional)
            result = kernel(x, hx, *args, False) if packed is None else kernel(x, packed.batch_sizes, hx, *args)
            x = result[0]
            finals.append(list(result[1:]))
            if split and last < L:
                # a locked mask per sequence: (1, B, D*H) padded, or the rows of each step when packed
                if packed is None or not self.variational:
                    x = self._between_layers(x, (1, B, x.shape[-1]))
                else:
                    mask = self._between_layers(x.new_ones(B, x.shape[-1]), (B, x.shape[-1]))
                    x = x * torch.cat([mask[:n] for n in packed.batch_sizes.tolist()])
        final = [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*finals)]  # (L*D, B, H) each
        if packed is not None:
            unorder = packed.unsorted_indices
            out = PackedSequence(x, packed.batch_sizes, packed.sorted_indices, unorder)
            x, _ = pad_packed_sequence(out, total_length=T)  # (T, B, D*H)
            final = [f.index_select(1, unorder) for f in final]
        return x, (final[0], final[1]) if self.has_cell_state else final[0]

    def _scan(self, x: Tensor, state: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Every layer and direction of a ScanCell over the whole sequence at once."""
        return self._layerwise(x, state, lengths, lambda k, seq, h0, valid: self.cells[k].scan(seq, h0, valid))

    def _layerwise(
        self, x: Tensor, state: Tensor, lengths: Tensor | None,
        run: Callable[[int, Tensor, Tensor, Tensor | None], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Layer after layer, direction after direction, `run(k, x (T, B, E), h_0 (B, H), valid)`
        gives layer-direction k's h at every step (T, B, H); valid (T, B, 1) marks the steps inside
        each sequence (None without lengths). A backward direction reads each sequence reversed
        within its own length, so every sequence's last valid step holds its final state, whatever
        the steps past its end computed."""
        T, B, D = x.shape[0], x.shape[1], self.num_directions
        last = torch.full((1, B, 1), T - 1, device=x.device) if lengths is None else (lengths - 1).view(1, B, 1)
        valid = None if lengths is None else (torch.arange(T, device=x.device)[:, None] < lengths)[..., None]
        order = None if D == 1 else _reversal(T, lengths, x.device)  # (T, B, 1), its own inverse
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                seq = layer_input if direction == 0 else _reorder(layer_input, order)
                h = run(k, seq, state[k], valid)  # (T, B, H)
                finals.append(h.gather(0, last.expand(-1, -1, h.shape[-1]))[0])
                h = h if valid is None else h * valid
                outputs.append(h if direction == 0 else _reorder(h, order))
            layer_input = torch.cat(outputs, dim=-1) if D == 2 else outputs[0]  # (T, B, D*H)
            if layer < self.num_layers - 1 and self.dropout > 0:
                layer_input = self._between_layers(layer_input, (1, B, layer_input.shape[-1]))
        return layer_input, torch.stack(finals)  # (L*D, B, H)

    def _reference(
        self, x: Tensor, state: State, lengths: Tensor | None, keep_steps: bool
    ) -> tuple[Tensor, State, tuple[tuple[State, ...], ...]]:
        T = x.shape[0]
        D = self.num_directions
        # valid[t, b]: step t lies inside sequence b; past the end the state is held, the output is 0
        valid = None if lengths is None else (torch.arange(T, device=x.device)[:, None] < lengths)[..., None]
        layer_input, finals, steps = x, [], []
        dropped_W = self._dropped_W()
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                cell: Cell = self.cells[k]
                step = cell if dropped_W[k] is None else partial(_with_W, cell, dropped_W[k])
                s = (state[0][k], state[1][k]) if self.has_cell_state else state[k]
                hs: list[Any] = [None] * T
                kept: list[Any] = [None] * T
                # one unbind, not T indexings: each x[t] would send back a gradient as large as all
                # of x, and the backward pass would cost O(T^2 B E) (T = 512: 21 s instead of 0.1 s)
                inputs = layer_input.unbind(0)
                for t in range(T) if direction == 0 else range(T - 1, -1, -1):
                    h, new = step(inputs[t], s)
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
                layer_input = self._between_layers(layer_input, (1, x.shape[1], layer_input.shape[-1]))
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
        a CPU, and for a cell without a fused kernel.
        """
        if not self.has_kernel:
            return
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
        if self.cell not in _TORCH_NAMES.values():
            raise ValueError(f"torch.nn has no module for cell {self.cell!r}")
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


def _reversal(T: int, lengths: Tensor | None, device: torch.device) -> Tensor | None:
    """Time indices (T, B, 1) that reverse each sequence within its length (steps past it stay)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device)[:, None]  # (T, 1)
    return torch.where(t < lengths, lengths - 1 - t, t)[..., None]  # (T, B, 1)


def _reorder(x: Tensor, order: Tensor | None) -> Tensor:
    """x (T, B, F) read in `order` along time; None: reversed."""
    return x.flip(0) if order is None else x.gather(0, order.expand(-1, -1, x.shape[-1]))


def _with_W(cell: Cell, W: Tensor, x: Tensor, state: State) -> tuple[Tensor, State]:
    """One step of `cell` with its recurrent matrix replaced by W (weight drop)."""
    return torch.func.functional_call(cell, {"W": W}, (x, state))


def _where(keep: Tensor, new: State, old: State) -> State:
    if isinstance(new, tuple):
        return (torch.where(keep, new[0], old[0]), torch.where(keep, new[1], old[1]))
    return torch.where(keep, new, old)
