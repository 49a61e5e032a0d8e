"""Diagnostics: why vanilla recurrent networks forget, measured.

tanh.py      iterated tanh and its derivative, the seed's intuition
gradflow.py  ||dL/ds_t|| through time, step Jacobians, the spectrum of the Elman W
tasks.py     the adding and copy-memory tasks, a small model and its training loop
attribution.py  which prompt words drove a prediction (occlusion, gradient x input)
plots.py     the figures
"""

from .attribution import Attribution, attribute
from .gradflow import GradientFlow, gradient_flow, step_jacobians, vanishing_lag
from .plots import (
    plot_attribution,
    plot_gradient_flow,
    plot_iterated_tanh,
    plot_task_curves,
)
from .tanh import iterated_tanh
from .tasks import (
    TASKS,
    Task,
    TaskConfig,
    TaskModel,
    TaskResult,
    adding_problem,
    copy_baseline,
    copy_memory,
    evaluate,
    held_out,
    make_model,
    train,
    train_task,
)

__all__ = [
    "TASKS",
    "Attribution",
    "GradientFlow",
    "Task",
    "TaskConfig",
    "TaskModel",
    "TaskResult",
    "adding_problem",
    "attribute",
    "copy_baseline",
    "copy_memory",
    "evaluate",
    "gradient_flow",
    "held_out",
    "iterated_tanh",
    "make_model",
    "plot_attribution",
    "plot_gradient_flow",
    "plot_iterated_tanh",
    "plot_task_curves",
    "step_jacobians",
    "train",
    "train_task",
    "vanishing_lag",
]
