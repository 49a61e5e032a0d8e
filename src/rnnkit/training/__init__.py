"""Training: one loop for every task, its callbacks, and the model directory it writes."""

from . import distributed
from .callbacks import Callback, MetricsFile, ProgressBar, TensorBoard
from .checkpoint import ModelKind, load_model, read_config, register_kind, save_model
from .loop import LoopState, Task, TrainConfig, fit, resolve_device

__all__ = [
    "Callback",
    "LoopState",
    "MetricsFile",
    "ModelKind",
    "ProgressBar",
    "Task",
    "TensorBoard",
    "TrainConfig",
    "distributed",
    "fit",
    "load_model",
    "read_config",
    "register_kind",
    "resolve_device",
    "save_model",
]
