"""A language model exported to ONNX and run by onnxruntime: the same predictions without PyTorch's
per-call overhead, and with int8 weights a quarter of the memory traffic.

One graph reads T tokens of B sequences from a state and gives the last token's log-probabilities:

    ids (T, B) int64, lengths (B,) int32, h0 (L, B, H) [, c0 (L, B, H)]
      -> Gather (embedding) -> LSTM | GRU | RNN, one node per layer -> h of the top layer at each
         sequence's own last token -> MatMul V + c -> LogSoftmax
      -> log_probs (B, V), h (L, B, H) [, c (L, B, H)]

T = 1 is a decoding step; T = the prompt's length reads a prompt in one call, each recurrent node
reading all its T inputs with one matrix product. The graph is written with `onnx.helper` from the
cells' own tensors (`flat_weights`, the fused kernels' layout), not traced by `torch.onnx.export`:
the TorchScript exporter is deprecated, and the torch.export-based one (which needs onnxscript)
fixed the time axis at the example's length. int8 is onnxruntime's dynamic quantisation:
LSTM -> DynamicQuantizeLSTM, the output layer's MatMul -> MatMulInteger, the embedding -> int8
rows, with a scale per output row; a GRU's or Elman's recurrent weights stay float32 (onnxruntime
has no quantised GRU or RNN node). int4 is int8 but for the output layer, the largest matrix (H x V),
whose weights take 4 bits with a scale per block of 32 (MatMulNBits, made for one row at a time:
decoding, where every step reads the whole matrix from memory).

    DIR/onnx/step.onnx         the float32 graph (matches PyTorch to 1e-4)
    DIR/onnx/step.int8.onnx    the int8 graph, when exported with int8
    DIR/onnx/step.int4.onnx    the int4 graph, when exported with int4
    DIR/onnx/start.safetensors the calibrated start state (S, L, H) that prompts are read from
    DIR/onnx/export.json       what was exported from: the weights' sha256 and the model config

`OnnxLanguageModel` follows the decoding protocol (`step`, `reorder_state`) and reads prompts as
`read_prompts` asks, so `predict_next`, `sample` and `beam_search` run on it unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..._version import __version__
from ...data import Tokenizer, load_tokenizer
from ...data.datasets import file_digest
from ...errors import RnnkitError
from ...io import read_json, read_tensors, write_bytes, write_json, write_tensors
from ...nn.cells import State
from ...training.checkpoint import WEIGHTS, load_model, lock_directory, read_config
from .model import LMConfig, RNNLanguageModel, require_eval
from .task import TOKENIZER, check_vocabulary

FOLDER, START, EXPORT = "onnx", "start.safetensors", "export.json"
GRAPHS = {"float32": "step.onnx", "int8": "step.int8.onnx", "int4": "step.int4.onnx"}  # precision -> file
FP32 = GRAPHS["float32"]
RUNTIMES = {"onnx": "float32", "onnx-int8": "int8", "onnx-int4": "int4"}  # `--runtime` -> precision
INT4_BLOCK = 32  # weights per int4 scale: 4 bits + a float16 scale per 32 is 4.5 bits a weight
FORMAT, VERSION = "rnnkit-onnx", 1
OPSET = 17  # onnxruntime >= 1.12 runs it; the graph needs 13 (Squeeze's axes as an input)

# ONNX's gate order, as indices into PyTorch's: LSTM i, f, g, o -> i, o, f, c; GRU r, z, n -> z, r, h
_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}


def _require(module: str, why: str) -> Any:
    """Import an optional package, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RnnkitError(f"{why} needs the {module} package: pip install {module}") from None


# ---------------------------------------------------------------- the graph


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _onnx_weight(t: Tensor, gates: list[int]) -> np.ndarray:
    """A PyTorch weight (G H, ...) or bias (G H,) with its gates in ONNX's order, (1, G H, ...)."""
    blocks = t.reshape(len(gates), -1, *t.shape[1:])  # (G, H, ...)
    return _numpy(blocks[gates].reshape(1, *t.shape))  # one direction


def build_graph(model: RNNLanguageModel) -> Any:
    """The model (in eval mode; a cell with a fused kernel) as an onnx ModelProto."""
    onnx = _require("onnx", "exporting to ONNX")
    from onnx import TensorProto, helper, numpy_helper

    require_eval(model)
    rnn = model.rnn
    if not rnn.has_kernel:
        raise RnnkitError(f"a model with the {rnn.cell!r} cell cannot be exported to ONNX (elman, lstm and gru can)")
    mode, gates, L = rnn.mode, _GATES[rnn.mode], rnn.num_layers
    op = {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")
    attributes: dict[str, Any] = {"hidden_size": rnn.hidden_size}
    if op == "GRU":
        attributes["linear_before_reset"] = 1  # PyTorch's GRU: r * (W h + b_W)
    if op == "RNN":
        attributes["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"]

    def array(name: str, value: Any) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    initializers: list[Any] = []
    parts = ["h", "c"] if rnn.has_cell_state else ["h"]
    embedding = array("embedding", _numpy(model.embedding.weight))
    nodes = [helper.make_node("Gather", [embedding, "ids"], ["x0"])]  # (T, B, E)
    axis0 = array("axis0", np.array([0]))
    axis1 = array("axis1", np.array([1])) if L > 1 else ""  # between layers; an unused one would be warned about
    for k, cell in enumerate(rnn.cells):
        weights = cell.flat_weights()  # U, W (, b_U, b_W): PyTorch's layout
        inputs = [f"x{k}", array(f"W{k}", _onnx_weight(weights[0], gates)),
                  array(f"R{k}", _onnx_weight(weights[1], gates))]
        inputs.append(array(f"B{k}", np.concatenate([_onnx_weight(b, gates) for b in weights[2:]], axis=1))
                      if len(weights) == 4 else "")
        inputs.append("lengths")
        layer = [array(f"from{k}", np.array([k])), array(f"to{k}", np.array([k + 1])), axis0]
        for p in parts:  # layer k's slice of the state, (1, B, H)
            nodes.append(helper.make_node("Slice", [f"{p}0", *layer], [f"{p}0_{k}"]))
            inputs.append(f"{p}0_{k}")
        outputs = [f"y{k}"] + [f"{p}_{k}" for p in parts]  # y (T, 1, B, H); h, c (1, B, H)
        nodes.append(helper.make_node(op, inputs, outputs, name=f"layer{k}", **attributes))
        if k < L - 1:
            nodes.append(helper.make_node("Squeeze", [f"y{k}", axis1], [f"x{k + 1}"]))  # (T, B, H)
    for p in parts:
        nodes.append(helper.make_node("Concat", [f"{p}_{k}" for k in range(L)], [p], axis=0))  # (L, B, H)
    # the top layer's h holds each sequence's own last step (sequence_lens): the output layer reads it
    nodes += [
        helper.make_node("Squeeze", [f"h_{L - 1}", axis0], ["top"]),  # (B, H)
        helper.make_node("MatMul", ["top", array("head_weight", _numpy(model.head.weight.T.contiguous()))],
                         ["o"]),  # (B, V)
        helper.make_node("Add", ["o", array("head_bias", _numpy(model.head.bias))], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1),
    ]
    state_shape = [L, "B", rnn.hidden_size]
    graph = helper.make_graph(
        nodes, f"rnnkit-lm-{rnn.cell}",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", "B"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"])]
        + [helper.make_tensor_value_info(f"{p}0", TensorProto.FLOAT, state_shape) for p in parts],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["B", model.config.vocab_size])]
        + [helper.make_tensor_value_info(p, TensorProto.FLOAT, state_shape) for p in parts],
        initializers,
    )
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                    producer_name="rnnkit", producer_version=__version__)
    if graph_model.ByteSize() >= 2**31:  # protobuf's limit; larger graphs need their weights in separate files
        raise RnnkitError(f"the model's weights take {graph_model.ByteSize() / 2**30:.1f} GiB, more than the 2 GiB "
                          f"one ONNX file holds")
    onnx.checker.check_model(graph_model)
    return graph_model


def export_onnx(model: RNNLanguageModel, path: str | Path, precision: str = "float32") -> Path:
    """Write the model's graph (see the module's docstring) to `path`, atomically, in `precision`:
    float32, int8 (dynamically quantised: int8 weights, a scale per output row) or int4 (int8, but
    the output layer's weights in 4 bits, a scale per block of INT4_BLOCK)."""
    _check_precision(precision)
    graph = build_graph(model)
    if precision == "float32":
        return write_bytes(path, graph.SerializeToString())
    _require("onnxruntime", f"{precision} quantisation")
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="rnnkit-onnx-") as tmp, _quiet_logging():
        plain, prepared, quantized = Path(tmp, "plain.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "quantized.onnx")
        if precision == "int4":  # the output layer first: int8's quantiser then leaves its MatMulNBits node alone
            _require("onnx_ir", "int4 quantisation")  # onnxruntime's quantiser needs it, and does not say so
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(graph, bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                                             accuracy_level=4)  # 4: int8 activations, integer dot products
            quantizer.process()
            graph = quantizer.model.model
        write_bytes(plain, graph.SerializeToString())
        if precision == "int8":  # shapes for the quantiser (it cannot read a MatMulNBits node's, nor needs them)
            quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
            plain = prepared
        quantize_dynamic(plain, quantized, per_channel=True, weight_type=QuantType.QInt8)
        return write_bytes(path, quantized.read_bytes())


def _check_precision(precision: str) -> None:
    if precision not in GRAPHS:
        raise RnnkitError(f"precision must be one of {', '.join(GRAPHS)}, got {precision!r}")


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's quantisers log their progress and advice through `logging`: not for our users."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ---------------------------------------------------------------- a model directory's export


def export_directory(directory: str | Path, quantised: Sequence[str] = ()) -> list[Path]:
    """Export the language model in `directory` into DIR/onnx (see the module's docstring): the
    float32 graph and one graph for each of `quantised` ("int8", "int4"); returns the files written.
    The record goes last and is removed first, so an interrupted export is never taken for a
    finished one."""
    for precision in quantised:
        if precision not in GRAPHS or precision == "float32":
            raise RnnkitError(f"a quantised graph is int8 or int4, not {precision!r}")
    directory = Path(directory)
    folder = directory / FOLDER
    read_config(directory)  # a model directory, or an error, before the lock makes a folder
    with lock_directory(directory):  # a training run writing the weights now is refused here
        model, _ = load_model(directory, kind=RNNLanguageModel.kind)
        digest = file_digest(directory / WEIGHTS)
        (folder / EXPORT).unlink(missing_ok=True)
        written = [export_onnx(model, folder / FP32)]
        for precision, name in GRAPHS.items():
            if precision in quantised:
                written.append(export_onnx(model, folder / name, precision))
            elif precision != "float32":
                (folder / name).unlink(missing_ok=True)  # from an older export: its weights may be stale
        write_tensors(folder / START, {"start": model.start})
        written.append(folder / START)
        written.append(write_json(folder / EXPORT, {
            "format": FORMAT, "version": VERSION, "weights_sha256": digest, "model": model.config.to_dict(),
            "graphs": [p.name for p in written if p.suffix == ".onnx"], "opset": OPSET, "rnnkit": __version__,
        }))
    return written


def _export_command(directory: Path, precision: str) -> str:
    return f"rnnkit export {directory} --format onnx" + ("" if precision == "float32" else f" --{precision}")


def load_onnx(directory: str | Path, precision: str = "float32",
              threads: int = 1) -> tuple[OnnxLanguageModel, Tokenizer]:
    """The ONNX export of the language model in `directory` in `precision` (float32, int8, int4)
    and its tokenizer. RnnkitError, saying the command to run, when there is no such export or the
    weights changed since it was made."""
    directory = Path(directory)
    config = read_config(directory)
    if config["kind"] != RNNLanguageModel.kind:
        raise RnnkitError(f"{directory} holds a {config['kind']!r} model, not the 'lm' model asked for")
    _check_precision(precision)
    graph = directory / FOLDER / GRAPHS[precision]
    record_path = directory / FOLDER / EXPORT
    command = _export_command(directory, precision)
    if not record_path.exists() or not graph.exists():
        raise RnnkitError(f"{directory} has no {'' if precision == 'float32' else precision + ' '}ONNX export: "
                          f"run `{command}` first")
    record = read_json(record_path, "the ONNX export's record")
    if not isinstance(record, dict) or record.get("format") != FORMAT or graph.name not in record.get("graphs", []):
        raise RnnkitError(f"{record_path} is not a finished rnnkit ONNX export: run `{command}`")
    if record.get("model") != config["model"] or record.get("weights_sha256") != file_digest(directory / WEIGHTS):
        raise RnnkitError(f"the ONNX export in {directory / FOLDER} is older than the model's weights (retrained "
                          f"since?): run `{command}` again")
    tokenizer = load_tokenizer(directory / TOKENIZER)
    check_vocabulary(LMConfig.from_dict(config["model"]), tokenizer)
    start = read_tensors(directory / FOLDER / START, "the ONNX export's start state")["start"]
    return OnnxLanguageModel(graph, start, threads), tokenizer


# ---------------------------------------------------------------- running it


class OnnxLanguageModel:
    """An exported language model run by onnxruntime, with torch tensors at its boundary (on the CPU).

    It reads prompts as `read_prompts` asks of a model: `start_state(B)` and
    `self(ids (T, B), state, lengths, last_only=True) -> (log_probs (B, V), state)` (log-probabilities
    are logits too: log_softmax leaves them as they are); and it decodes by the protocol's `step`
    and `reorder_state`. One onnxruntime session, whose `run` may be called from many threads.
    """

    training = False  # an exported graph has no dropout to switch on; `require_eval` asks

    def __init__(self, graph: str | Path, start: Tensor, threads: int = 1) -> None:
        """graph: an .onnx file written by `export_onnx`; start: the start state (S, L, H).
        threads: onnxruntime's intra-op threads. One by default: at batch 1 every node is a
        matrix-vector product of a few MB, which a second thread barely speeds up, while its pool
        competes with whatever else runs on the machine."""
        ort = _require("onnxruntime", "running an ONNX export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the library prints nothing
        if threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy waits between calls
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.start = start.float().cpu()
        self.has_cell_state = self.start.shape[0] == 2

    def parameters(self) -> Iterator[Tensor]:
        """The tensors held in torch (the start state): `read_prompts` puts the prompt on their device."""
        return iter((self.start,))

    def start_state(self, batch_size: int) -> State:
        """The calibrated state of a line start, for prompts: h (L, B, H), or (h, c)."""
        parts = tuple(p[:, None].expand(-1, batch_size, -1).contiguous() for p in self.start)  # (L, B, H) each
        return parts if self.has_cell_state else parts[0]

    reorder_state = staticmethod(RNNLanguageModel.reorder_state)

    def __call__(self, ids: Tensor, state: State, lengths: Tensor | None = None,
                 last_only: bool = True) -> tuple[Tensor, State]:
        """log p(next token) after each of B sequences of token ids (T, B), (B, V), and the state
        after each one's last token; lengths (B,): sequences padded after their ends."""
        if not last_only:
            raise ValueError("the exported graph gives the last token's log-probabilities alone: last_only=True")
        T, B = ids.shape
        feeds = {"ids": ids.numpy(), "lengths": np.full(B, T, np.int32) if lengths is None else lengths.int().numpy()}
        parts = state if isinstance(state, tuple) else (state,)
        feeds.update({f"{p}0": s.numpy() for p, s in zip("hc", parts)})
        log_probs, *new = (torch.from_numpy(o) for o in self.session.run(None, feeds))
        return log_probs, (new[0], new[1]) if self.has_cell_state else new[0]

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One token for each of B sequences, (B,) -> log-probabilities of the next (B, V) and the state."""
        return self(tokens[None], state)
