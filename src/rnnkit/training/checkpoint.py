"""The only code that reads or writes a model directory.

    DIR/config.json            {"format": "rnnkit-model", "model": LMConfig, "train": TrainConfig}
    DIR/tokenizer.json         the tokenizer (rnnkit.text.tokenizers)
    DIR/model.safetensors      the weights that did best on validation (the latest without validation)
    DIR/metrics.jsonl          one JSON object per evaluation
    DIR/trainer_state/         what `--resume` needs: latest weights, optimizer, scheduler, RNG
                               states, the carried hidden state and the position in the data

Tensors go to safetensors and everything else to JSON: loading never executes code from the
file. Every file is written to a temp file, fsynced and renamed, so a crash leaves the old file
or the new one, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RnnkitError
from ..apps.lm.model import LMConfig, RNNLanguageModel
from ..io import read_json, read_tensors, write_json, write_tensors
from ..data.tokenizers import Tokenizer, load_tokenizer

FORMAT, VERSION = "rnnkit-model", 1
CONFIG, TOKENIZER, WEIGHTS, METRICS, STATE_DIR = (
    "config.json", "tokenizer.json", "model.safetensors", "metrics.jsonl", "trainer_state",
)


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The state dict with tied tensors stored once (safetensors refuses shared memory)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor
    return tensors


def load_weights(model: nn.Module, path: Path, what: str = "model weights") -> None:
    tensors = read_tensors(path, what)
    expected = model_tensors(model)
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise RnnkitError(f"{what} in {path} do not match the model in config.json")
    model.load_state_dict(tensors, strict=False)  # tied aliases are filled by their first name


def save_model(directory: Path, model: RNNLanguageModel, tokenizer: Tokenizer, train_config: dict[str, Any]) -> None:
    """Write config.json, tokenizer.json and model.safetensors (each atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG, {"format": FORMAT, "version": VERSION, "model": model.config.to_dict(), "train": train_config})
    tokenizer.save(directory / TOKENIZER)
    write_tensors(directory / WEIGHTS, model_tensors(model))


def read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise RnnkitError(f"model directory not found: {directory}")
    config = read_json(directory / CONFIG, "the model's config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise RnnkitError(f"{directory / CONFIG} is not an rnnkit model config")
    return config


def load_model(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[RNNLanguageModel, Tokenizer]:
    """The model (in eval mode) and tokenizer saved in `directory`; RnnkitError if it is not a model directory."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model_config = LMConfig.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise RnnkitError(f"{directory / CONFIG}: {e}") from None
    tokenizer = load_tokenizer(directory / TOKENIZER)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise RnnkitError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {model_config.vocab_size}"
        )
    model = RNNLanguageModel(model_config)
    load_weights(model, directory / WEIGHTS)
    return model.to(device).eval(), tokenizer


def flatten_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state (dicts, lists, tensors, numbers) into JSON and named tensors."""
    if isinstance(state, Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(state.items())]}
    if isinstance(state, (list, tuple)):
        return {"__" + type(state).__name__ + "__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]}
    return state


def unflatten_state(data: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(data, dict):
        if "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if "__dict__" in data:
            return {k: unflatten_state(v, tensors) for k, v in data["__dict__"]}
        if "__list__" in data:
            return [unflatten_state(v, tensors) for v in data["__list__"]]
        if "__tuple__" in data:
            return tuple(unflatten_state(v, tensors) for v in data["__tuple__"])
    return data


def save_trainer_state(directory: Path, model: nn.Module, step: int, state: dict[str, Any]) -> None:
    """Latest weights and a nested training state; `state.json` is renamed last, so it always
    names a complete set (the weights file it points to is written first under a fresh name)."""
    folder = directory / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    data = flatten_state(state, "s", tensors)
    write_tensors(folder / f"model-{step}.safetensors", model_tensors(model))
    write_tensors(folder / f"state-{step}.safetensors", tensors)
    previous = folder / "state.json"
    old_step = read_json(previous, "trainer state")["step"] if previous.exists() else None
    write_json(previous, {"step": step, "state": data})
    if old_step is not None and old_step != step:
        for name in (f"model-{old_step}.safetensors", f"state-{old_step}.safetensors"):
            (folder / name).unlink(missing_ok=True)


def load_trainer_state(directory: Path, model: nn.Module) -> dict[str, Any]:
    """Restore the latest weights into `model` and return the training state saved with them."""
    folder = directory / STATE_DIR
    meta = read_json(folder / "state.json", "the trainer state for --resume")
    step = meta["step"]
    load_weights(model, folder / f"model-{step}.safetensors", "the trainer state's weights")
    tensors = read_tensors(folder / f"state-{step}.safetensors", "the trainer state")
    return unflatten_state(meta["state"], tensors)
