"""Figures for the diagnostics. They are built on matplotlib's Figure directly, never pyplot, so no
backend is chosen and no global state changes; `io.save_figure` renders them with Agg."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from .attribution import Attribution
from .gradflow import GradientFlow
from .tasks import TaskResult

CELL_COLORS = {"elman": "tab:red", "lstm": "tab:blue", "gru": "tab:green", "window": "tab:purple",
               "mingru": "tab:olive", "minlstm": "tab:cyan"}
PHASE_STYLES = ("--", "-", ":", "-.")


def plot_iterated_tanh(x: Tensor, values: Tensor, derivatives: Tensor) -> Figure:
    """y_n = tanh^n(x) and dy_n/dx against x, one line per n (see `iterated_tanh`)."""
    n = values.shape[0]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, n))
    shown = {1, n} | {2**i for i in range(n.bit_length())}
    for j in range(n):
        label = f"n = {j + 1}" if j + 1 in shown else None
        left.plot(x, values[j], color=colors[j], lw=1.2, label=label)
        right.plot(x, derivatives[j], color=colors[j], lw=1.2, label=label)
    left.set(title="tanh applied n times", xlabel="x", ylabel="tanh^n(x)")
    right.set(title="its derivative: prod_j (1 - y_j^2)", xlabel="x", ylabel="d tanh^n(x) / dx")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return fig


def plot_gradient_flow(flows: Mapping[str, Mapping[str, GradientFlow]], ratio: float = 1e-3) -> Figure:
    """One column per cell; flows[cell][phase] (e.g. "init", "trained") as line styles.

    Top row: ||dL/ds_{T-k}|| / ||dL/ds_T|| against the lag k, log scale, with the `ratio` line.
    Bottom row (when measured): the step Jacobians' largest singular values against the lag.
    """
    cells = list(flows)
    jacobians = any(f.jacobian_norms is not None for by in flows.values() for f in by.values())
    rows = 2 if jacobians else 1
    fig = Figure(figsize=(3.6 * len(cells) + 0.6, 3.2 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, len(cells), sharex=True, sharey="row", squeeze=False))
    for c, cell in enumerate(cells):
        top = axes[0, c]
        notes = []
        for p, (phase, flow) in enumerate(flows[cell].items()):
            style = PHASE_STYLES[p % len(PHASE_STYLES)]
            lags = np.arange(flow.steps)
            for k, r in enumerate(flow.ratios()):
                label = phase if len(flow.ratios()) == 1 else f"{phase}, layer {k}"
                color = CELL_COLORS.get(cell) if k == 0 else None
                top.plot(lags, _positive(r), style, color=color, lw=1.3, label=label)
                if flow.jacobian_norms is not None:
                    axes[1, c].plot(lags, flow.jacobian_norms[k], style, color=color, lw=1.0, label=label)
            if flow.spectral_radius is not None:
                notes.append(
                    f"{phase}: rho(W)={flow.spectral_radius[0]:.2f}, ||W||={flow.spectral_norm[0]:.2f}"
                )
        top.axhline(ratio, color="grey", lw=0.8, ls=":")
        top.set_yscale("log")
        top.set_title(cell if not notes else f"{cell}\n" + "\n".join(notes), fontsize=9)
        top.legend(fontsize=8)
        top.grid(alpha=0.3)
        if jacobians:
            axes[1, c].grid(alpha=0.3)
            axes[1, c].set_xlabel("lag k (steps before the last)")
        else:
            top.set_xlabel("lag k (steps before the last)")
    axes[0, 0].set_ylabel("||dL/ds_(T-k)|| / ||dL/ds_T||")
    if jacobians:
        axes[1, 0].set_ylabel("||ds_t/ds_(t-1)||_2 at t = T-k")
    return fig


def plot_task_curves(results: Sequence[TaskResult]) -> Figure:
    """Test loss against training steps: one panel per T, one line per cell, chance dashed."""
    lengths = sorted({r.T for r in results})
    fig = Figure(figsize=(3.4 * len(lengths) + 0.6, 3.2), layout="constrained")
    axes = np.asarray(fig.subplots(1, len(lengths), sharey=True, squeeze=False))[0]
    for ax, T in zip(axes, lengths):
        baseline = None
        for r in results:
            if r.T == T:
                ax.plot(r.eval_steps, _positive(np.asarray(r.test_loss)), color=CELL_COLORS.get(r.cell),
                        lw=1.3, label=r.cell)
                baseline = r.baseline
        ax.axhline(baseline, color="grey", lw=1.0, ls="--", label="memoryless")
        ax.set_yscale("log")
        ax.set(title=f"{results[0].task}, T = {T}", xlabel="training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test loss")
    axes[0].legend(fontsize=8)
    return fig


def plot_attribution(attribution: Attribution) -> Figure:
    """The prompt's tokens top to bottom, with their occlusion and integrated gradients scores as bars."""
    a = attribution
    y = np.arange(len(a.tokens))
    fig = Figure(figsize=(8, 0.28 * len(a.tokens) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = ("occlusion: log-odds lost when the word is swapped\nfor the words the model expected there",
              "integrated gradients: its share of the log-odds gained\nover sentences of words the model expected")
    for ax, scores, title in zip(axes, (a.occlusion, a.integrated_gradients), titles):
        scores = np.asarray(scores)
        ax.barh(y, scores, color=np.where(scores >= 0, "tab:blue", "tab:red"))
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, a.tokens)
    axes[0].invert_yaxis()
    fig.suptitle(f"Which words made the model say '{a.target}' (p = {a.prob:.3f})", fontsize=10)
    return fig


def _positive(a: np.ndarray) -> np.ndarray:
    """a with zeros and non-finite values as NaN: a log axis leaves them out instead of warning."""
    a = np.asarray(a, dtype=np.float64).copy()
    a[~np.isfinite(a) | (a <= 0)] = np.nan
    return a
