"""The only code that reads or writes a model directory, whatever the model's kind.

    DIR/config.json            {"format": "rnnkit-model", "version": 2, "kind": "lm",
                                "model": the model's config, "train": the training config}
    DIR/tokenizer.json         the assets the kind keeps beside the weights (the tokenizer)
    DIR/model.safetensors      the weights that did best on validation (the first ones until an evaluation)
    DIR/metrics.jsonl          one JSON object per evaluation
    DIR/trainer_state/         what resuming needs: latest weights, optimizer, scheduler, RNG
                               states, the carried state and the position in the data
    DIR/.lock                  locked by the process writing the directory (`lock_directory`)

`load_model` picks the model's class by "kind" from a registry that each application fills
(`register_kind`); a directory of version 1, written before kinds, is a language model. Tensors go
to safetensors and everything else to JSON: loading never executes code from the file. Every file
is written to a temp file, fsynced and renamed, so a crash leaves the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..configs import JSONConfig
from ..errors import RnnkitError
from ..io import read_json, read_tensors, tensor_shapes, write_json, write_tensors

FORMAT, VERSION = "rnnkit-model", 2
CONFIG, WEIGHTS, STATE_DIR, LOCK = "config.json", "model.safetensors", "trainer_state", ".lock"


@dataclass(frozen=True)
class ModelKind:
    """How to rebuild a model of one kind from its directory."""

    model_class: Callable[[Any], nn.Module]  # built as model_class(config)
    config_class: type[JSONConfig]
    load_assets: Callable[[Path], Any]  # what load_model returns beside the model (a tokenizer)
    check: Callable[[Any, Any], None] | None = None  # check(config, assets): RnnkitError if they disagree


KINDS: dict[str, ModelKind] = {}


def register_kind(name: str, kind: ModelKind) -> None:
    """Let `load_model` rebuild models whose config.json says "kind": name."""
    KINDS[name] = kind


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The state dict with tied tensors stored once (safetensors refuses shared memory)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict(keep_vars=True).items():  # tied parameters: one object
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[name] = tensor.detach()
    return tensors


def check_shapes(model: nn.Module, path: Path, what: str) -> None:
    """RnnkitError unless the safetensors file at `path` holds the model's tensors, by name and
    shape, read from its header alone (nothing allocated: `model` may live on the meta device)."""
    found = tensor_shapes(path, what)
    expected = {k: tuple(v.shape) for k, v in model_tensors(model).items()}
    if found != expected:
        name = next((k for k in sorted(expected.keys() | found.keys()) if expected.get(k) != found.get(k)))
        raise RnnkitError(f"{what} in {path} do not match the model in config.json "
                          f"({name}: {found.get(name, 'missing')} in the file, {expected.get(name, 'none')} in the model)")


def load_weights(model: nn.Module, path: Path, what: str = "model weights") -> None:
    """Load `path` into `model`, its shapes checked first; non-finite values are refused."""
    check_shapes(model, path, what)
    model.load_state_dict(_finite_tensors(path, what), strict=False)  # tied aliases are filled by their first name


def _finite_tensors(path: Path, what: str) -> dict[str, Tensor]:
    tensors = read_tensors(path, what)
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
        raise RnnkitError(f"{what} in {path} hold non-finite values (NaN or infinity): a run that diverged")
    return tensors


def save_model(directory: Path, model: nn.Module, assets: Mapping[str, Any], train_config: JSONConfig) -> None:
    """Write config.json, the assets (file name -> object with `to_json`) and model.safetensors,
    each atomically. The model names its `kind` and has a `config`."""
    write_config(directory, model, train_config)
    for name, asset in assets.items():
        write_json(directory / name, asset.to_json())
    write_tensors(directory / WEIGHTS, model_tensors(model))


def write_config(directory: Path, model: nn.Module, train_config: JSONConfig) -> None:
    """config.json: the format, the model's kind and config, and the training settings."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG, {
        "format": FORMAT, "version": VERSION, "kind": model.kind,
        "model": model.config.to_dict(), "train": train_config.to_dict(),
    })


def read_config(directory: Path) -> dict[str, Any]:
    """config.json, its "kind" filled in for a directory of version 1 (a language model)."""
    if not directory.is_dir():
        raise RnnkitError(f"model directory not found: {directory}")
    config = read_json(directory / CONFIG, "the model's config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise RnnkitError(f"{directory / CONFIG} is not an rnnkit model config")
    if config.get("version") not in (1, VERSION):
        raise RnnkitError(f"{directory / CONFIG} has format version {config.get('version')!r}; this rnnkit reads 1 and {VERSION}")
    if config["version"] == 1:
        config = {**config, "kind": "lm"}
    if not isinstance(config.get("kind"), str):
        raise RnnkitError(f"{directory / CONFIG} names no model kind")
    return config


def load_model(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu", kind: str | None = None
) -> tuple[nn.Module, Any]:
    """The model (in eval mode) saved in `directory` and its assets (a language model's tokenizer);
    RnnkitError if it is not a model directory, or not of `kind` when one is asked for."""
    directory = Path(directory)
    config = read_config(directory)
    if kind is not None and config["kind"] != kind:
        raise RnnkitError(f"{directory} holds a {config['kind']!r} model, not the {kind!r} model asked for")
    if config["kind"] not in KINDS:
        raise RnnkitError(f"{directory} holds a model of kind {config['kind']!r}, which this rnnkit does not know "
                          f"(known: {', '.join(sorted(KINDS))})")
    spec = KINDS[config["kind"]]
    try:
        model_config = spec.config_class.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise RnnkitError(f"{directory / CONFIG}: {e}") from None
    assets = spec.load_assets(directory)
    if spec.check is not None:
        spec.check(model_config, assets)
    with torch.device("meta"):  # the config's shapes, against the file's header, before any memory is taken
        check_shapes(spec.model_class(model_config), directory / WEIGHTS, "model weights")
    model = spec.model_class(model_config)
    model.load_state_dict(_finite_tensors(directory / WEIGHTS, "model weights"), strict=False)
    return model.to(device).eval(), assets


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
    """Latest weights and a nested training state. Each save writes its tensors under fresh names
    (a serial number: a step can be saved twice, at a checkpoint and at the epoch's end) and then
    renames `state.json` over the old one, so that it always names a complete set."""
    folder = directory / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    data = flatten_state(state, "s", tensors)
    old = _state_files(folder)
    serial = old[0] + 1 if old else 0
    files = [f"model-{step}-{serial}.safetensors", f"state-{step}-{serial}.safetensors"]
    write_tensors(folder / files[0], model_tensors(model))
    write_tensors(folder / files[1], tensors)
    write_json(folder / "state.json", {"step": step, "serial": serial, "files": files, "state": data})
    for name in old[1] if old else []:
        (folder / name).unlink(missing_ok=True)


def _state_files(folder: Path) -> tuple[int, list[str]] | None:
    """The serial number and tensor files state.json names (rnnkit 0.1's: model-N, state-N), or
    None where there is no readable state.json."""
    try:
        meta = read_json(folder / "state.json", "the trainer state")
    except RnnkitError:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return None
    files = meta.get("files", [f"model-{meta['step']}.safetensors", f"state-{meta['step']}.safetensors"])
    if not (isinstance(files, list) and len(files) == 2 and all(isinstance(f, str) and "/" not in f for f in files)):
        return None
    serial = meta.get("serial", -1)
    return (serial if isinstance(serial, int) else -1), files


def has_trainer_state(directory: Path) -> bool:
    return (directory / STATE_DIR / "state.json").exists()


def load_trainer_state(directory: Path, model: nn.Module) -> dict[str, Any]:
    """Restore the latest weights into `model` and return the training state saved with them."""
    folder = directory / STATE_DIR
    meta = read_json(folder / "state.json", "the trainer state")
    named = _state_files(folder)
    if named is None or not isinstance(meta.get("state"), dict):
        raise RnnkitError(f"the trainer state in {folder} is damaged (state.json names no step, files and state); "
                          f"it cannot be resumed")
    model_file, state_file = named[1]
    load_weights(model, folder / model_file, "the trainer state's weights")
    tensors = read_tensors(folder / state_file, "the trainer state")
    try:
        return unflatten_state(meta["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise RnnkitError(f"the trainer state in {folder} is damaged ({type(e).__name__}: {e}); it cannot be resumed") from None


# -------------------------------------------------------------------- one writer per directory

_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, depth, thread]: flock is per open file, so one per process


@contextlib.contextmanager
def lock_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on DIR/.lock for the block, so that a second process writing the
    same model directory is refused with an RnnkitError instead of mixing two runs. The operating
    system drops the lock with the process, SIGKILL included, so a killed run never leaves it
    stuck. Re-entrant within the thread that holds it; another thread is refused like another
    process. (POSIX flock; where there is none, no lock is taken.)"""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = (directory / LOCK).resolve()
    if path in _HELD:
        if _HELD[path][2] != threading.get_ident():
            raise RnnkitError(f"{directory} is being written by another thread of this process")
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RnnkitError(f"{directory} is being written by another rnnkit process (pid {holder}); "
                          f"wait for it to finish, or write somewhere else") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[path] = [fd, 1, threading.get_ident()]
    try:
        yield
    finally:
        del _HELD[path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_target(directory: Path, force: bool = False) -> None:
    """RnnkitError unless a run may write into `directory`: it does not exist, is empty, holds an
    rnnkit model (config.json), or was started by rnnkit (its .lock is there: a run stopped before
    its first save). Anything else is a folder of someone's files, which `force` overrides."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise RnnkitError(f"{directory} is a file, not a folder for a model")
    if (directory / CONFIG).exists():
        read_config(directory)  # an rnnkit model's, or an error saying what it is
        return
    theirs = sorted(p.name for p in directory.iterdir() if p.name != LOCK)
    if theirs and not (directory / LOCK).exists() and not force:
        shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
        raise RnnkitError(f"{directory} holds files that are not an rnnkit model ({shown}); write the model to "
                          f"an empty or new folder, or force it")


def remove_orphans(directory: Path) -> list[Path]:
    """Delete what a killed run can leave behind and nothing names: temp files of interrupted
    writes (anywhere in the directory), and trainer-state tensors other than those state.json
    names. Where state.json cannot be read, no tensors are deleted. Returns what was deleted."""
    orphans = [p for p in directory.rglob(".*.tmp") if p.is_file()]
    state = directory / STATE_DIR
    named = _state_files(state)
    if named is not None:
        orphans += [p for p in state.glob("*.safetensors") if p.name not in named[1]]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def pending_training(directory: Path, retrain: bool, say: Callable[[str], None]) -> bool | None:
    """What a demo must do for its cached model in `directory`: None when a finished run is there
    (its results.json) to reuse; else whether to resume the interrupted run there (False: train
    afresh; with `retrain`, what was there is removed first)."""
    if not retrain and (directory / "results.json").exists():
        return None
    if retrain and directory.exists():
        import shutil

        shutil.rmtree(directory)
    resume = (directory / "config.json").exists()
    if resume:
        say(f"continuing the training saved in {directory}")
    return resume
