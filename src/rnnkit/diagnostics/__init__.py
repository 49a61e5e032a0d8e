"""Diagnostics: why vanilla recurrent networks forget, measured.

tanh.py      iterated tanh and its derivative, the seed's intuition
gradflow.py  ||dL/ds_t|| through time, step Jacobians, the spectrum of the Elman W
tasks.py     the adding and copy-memory tasks, a small model, trained on the training loop
attribution.py which prompt words drove a prediction (occlusion, gradient x input)
plots.py     the figures
"""

from .attribution import Attribution, attribute
from .gradflow import GradientFlow, adding_flow, gradient_flow, language_model_flow, step_jacobians, vanishing_lag
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
    evaluate_task,
    fit_task,
    held_out,
    make_task_model,
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
    "adding_flow",
    "adding_problem",
    "attribute",
    "copy_baseline",
    "copy_memory",
    "evaluate_task",
    "fit_task",
    "gradient_flow",
    "held_out",
    "iterated_tanh",
    "language_model_flow",
    "make_task_model",
    "plot_attribution",
    "plot_gradient_flow",
    "plot_iterated_tanh",
    "plot_task_curves",
    "step_jacobians",
    "train_task",
    "vanishing_lag",
]
