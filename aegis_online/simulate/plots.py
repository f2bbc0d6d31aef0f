"""PNG plots of a run: rolling loss, cumulative regret, weights over time and windowed F1 / AUPRC.

Each function draws one figure from the arrays a run produced (the report's numbers come from the same arrays),
writes it with the Agg backend (no display needed) and returns its path. Imports matplotlib lazily.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.simulate.oracles import expert_losses
from aegis_online.simulate.report import covered_weights, covering
from aegis_online.simulate.runner import LearnerRun
from aegis_online.simulate.stream import Stream

_LEARNER_STYLE = {"default": {"linewidth": 2.2, "color": "tab:green"}, "hedge": {"color": "tab:red"}}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _drift_lines(ax: Any, drifts: Sequence[int], label: bool = True) -> None:
    for k, d in enumerate(drifts):
        ax.axvline(d, color="grey", linestyle="--", linewidth=0.9, label="drift" if label and k == 0 else None)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_loss(stream: Stream, runs: Mapping[str, LearnerRun], path: Path, title: str = "") -> Path:
    """Rolling mean loss per request of every learner (solid) and expert (thin), replica 0."""
    plt = _pyplot()
    window = max(stream.steps // 40, 10)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = np.arange(stream.steps)
    e_loss = np.nan_to_num(expert_losses(stream)[0]).sum(axis=1)  # (T, N)
    offset = window - 1
    for i, name in enumerate(stream.experts):
        ax.plot(x[offset:], _rolling(e_loss[:, i], window), linewidth=0.8, alpha=0.55, linestyle=":", label=name)
    for name, run in runs.items():
        loss = np.nan_to_num((run.predictions[0] - stream.truth[0]) ** 2).sum(axis=1)
        ax.plot(x[offset:], _rolling(loss, window), label=f"{name} (learner)", **_LEARNER_STYLE.get(name, {}))
    _drift_lines(ax, stream.drifts)
    ax.set(xlabel="request", ylabel=f"loss per request (mean of {window})", title=title or "Rolling loss")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return _save(fig, path)


def plot_regret(
    stream: Stream, runs: Mapping[str, LearnerRun], best_fixed: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Cumulative loss minus the best fixed expert's (chosen per stream in hindsight), replica 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    e_loss = expert_losses(stream)[0]  # (T, C, N)
    C = e_loss.shape[1]
    J = len(stream.tenants)
    # best_fixed[s] is the expert index of stream s = (replica, tenant, category); replica 0 comes first.
    chosen = best_fixed[: J * C].reshape(J, C)
    tenant = stream.tenant[0]
    picks = chosen[tenant]  # (T, C)
    reference = np.take_along_axis(np.nan_to_num(e_loss), np.maximum(picks, 0)[..., None], axis=2)[..., 0]
    reference = np.where(stream.evaluated[0], reference, 0.0).sum(axis=1)
    for name, run in runs.items():
        loss = np.nan_to_num((run.predictions[0] - stream.truth[0]) ** 2).sum(axis=1)
        ax.plot(np.cumsum(loss - reference), label=name, **_LEARNER_STYLE.get(name, {}))
    _drift_lines(ax, stream.drifts)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set(xlabel="request", ylabel="cumulative loss - best fixed expert", title=title or "Regret over time")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_weights(stream: Stream, runs: Mapping[str, LearnerRun], path: Path, category: str | None = None) -> Path:
    """Weights of the experts over time, one panel per learner (global scope, one category, replica 0).

    The category defaults to the one the most experts score (where weighing them matters most).
    """
    plt = _pyplot()
    if category is not None:
        c = stream.categories.index(category)
    else:
        c = int(np.argmax(np.isfinite(stream.outputs[0]).any(axis=0).sum(axis=1)))
    names = list(runs)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    covers = covering(stream)
    for ax, name in zip(axes.flat, names, strict=False):
        run = runs[name]
        samples = covered_weights(run.weight_samples, covers)
        for i, expert in enumerate(stream.experts):
            if covers[c, i]:  # an expert that never scores the category keeps a meaningless prior weight
                ax.plot(run.weight_times, samples[:, c, i], label=expert)
        _drift_lines(ax, stream.drifts, label=False)
        ax.set(title=name, ylim=(0, 1), xlabel="request")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"weight ({stream.categories[c]})")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_windowed(
    drifts: Sequence[int],
    windows: Mapping[str, Any],
    entries: Mapping[str, Mapping[str, Any]],
    path: Path,
    title: str = "",
) -> Path:
    """Windowed F1 and AUPRC (macro over categories) of each predictor, from the report's ``windowed`` entries."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    centres = np.asarray(windows["starts"], dtype=float) + windows["size"] / 2
    for name, entry in entries.items():
        windowed = entry["windowed"]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a window where a category has no positive
            f1 = np.nanmean(np.array(list(windowed["f1"].values()), dtype=float), axis=0)
            ap = np.nanmean(np.array(list(windowed["auprc"].values()), dtype=float), axis=0)
        style = _LEARNER_STYLE.get(name, {})
        left.plot(centres, f1, marker=".", label=name, **style)
        right.plot(centres, ap, marker=".", label=name, **style)
    for ax, label in ((left, "F1 (macro)"), (right, "AUPRC (macro)")):
        _drift_lines(ax, drifts, label=False)
        ax.set(xlabel="request", ylabel=label, ylim=(0, 1.02))
    left.legend(fontsize=7)
    fig.suptitle(title or "Windowed decision quality")
    return _save(fig, path)


def write_run_plots(
    stream: Stream,
    runs: Mapping[str, LearnerRun],
    report: Mapping[str, Any],
    best_experts: np.ndarray,
    out: Path,
    title: str,
    prefix: str = "",
) -> list[Path]:
    """Rolling loss, regret over time, weights and windowed F1/AUPRC of a run, as ``<prefix><kind>.png``."""
    full_info = {k: v for k, v in runs.items() if not v.bandit}
    entries = {**{k: report["learners"][k] for k in runs}, "uniform": report["baselines"]["uniform"]}
    return [
        plot_loss(stream, runs, out / f"{prefix}loss.png", title=f"{title}: rolling loss"),
        plot_regret(stream, runs, best_experts, out / f"{prefix}regret.png", title=f"{title}: regret over time"),
        plot_weights(stream, full_info or runs, out / f"{prefix}weights.png"),
        plot_windowed(
            stream.drifts, report["windows"], entries, out / f"{prefix}windowed.png", title=f"{title}: windowed"
        ),
    ]


def plot_overview(
    stream: Stream,
    runs: Mapping[str, LearnerRun],
    path: Path,
    title: str,
    learners: Sequence[str] = ("default", "hedge"),
    category: str | None = None,
) -> Path:
    """One figure per run for a results page: rolling loss (learners and experts) and the default's weights.

    The loss panel counts only the categories every expert scores, so experts of different coverage compare fairly.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    window = max(stream.steps // 40, 10)
    x = np.arange(stream.steps)[window - 1 :]
    common = np.isfinite(stream.outputs[0]).all(axis=2)  # (T, C)
    scope = "categories every expert scores" if not common.all() else "all categories"
    if not common.any():
        common, scope = np.ones_like(common), "all categories"
    e_loss = np.where(common[..., None], np.nan_to_num(expert_losses(stream)[0]), 0.0).sum(axis=1)
    for i, name in enumerate(stream.experts):
        left.plot(x, _rolling(e_loss[:, i], window), linewidth=0.8, alpha=0.6, linestyle=":", label=name)
    for name in learners:
        if name in runs:
            loss = np.where(common, np.nan_to_num((runs[name].predictions[0] - stream.truth[0]) ** 2), 0.0)
            left.plot(x, _rolling(loss.sum(axis=1), window), label=name, **_LEARNER_STYLE.get(name, {}))
    _drift_lines(left, stream.drifts, label=False)
    left.set(xlabel="request", ylabel=f"loss per request (mean of {window})", title=f"rolling loss, {scope}")
    left.legend(fontsize=6, ncol=2, loc="upper left")
    run = runs[learners[0]]
    c = (
        stream.categories.index(category)
        if category
        else int(np.argmax(np.isfinite(stream.outputs[0]).any(axis=0).sum(axis=1)))
    )
    if run.tenant_weight_samples:
        # Per tenant, the weights its requests used (its own once personalised); experts that never matter omitted.
        styles = ("-", "--", ":", "-.")
        colours = {name: f"C{i}" for i, name in enumerate(stream.experts)}
        for k, (tenant, raw) in enumerate(run.tenant_weight_samples.items()):
            samples = covered_weights(raw, covering(stream))
            for i, name in enumerate(stream.experts):
                if np.nanmax(samples[:, c, i], initial=0.0) > 0.2:
                    right.plot(
                        run.weight_times,
                        samples[:, c, i],
                        linestyle=styles[k % len(styles)],
                        color=colours[name],
                        label=f"{tenant}: {name}",
                    )
        scope = "per tenant"
    else:
        samples = covered_weights(run.weight_samples, covering(stream))
        for i, name in enumerate(stream.experts):
            if np.isfinite(samples[:, c, i]).any():
                right.plot(run.weight_times, samples[:, c, i], label=name)
        scope = "global"
    _drift_lines(right, stream.drifts, label=False)
    right.set(
        xlabel="request", ylabel="weight", ylim=(0, 1), title=f"{learners[0]} weights ({scope}), {stream.categories[c]}"
    )
    right.legend(fontsize=6, loc="center right")
    fig.suptitle(title)
    return _save(fig, path)


_TENANT_STYLE = {
    "adaptive": {"linewidth": 2.2, "color": "tab:green"},
    "fixed": {"color": "tab:red"},
    "global_only": {"color": "tab:purple", "linestyle": "--"},
}


def plot_tenant_f1(
    curves: Mapping[str, np.ndarray], changes: Sequence[int], window: int, path: Path, title: str
) -> Path:
    """One tenant's rolling F1 (trailing ``window`` labels) per predictor against its label count, with a dashed
    line where its policy changed: how fast each predictor gets to its level, and comes back after a change."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, f1 in curves.items():
        style = _TENANT_STYLE.get(name, {"linewidth": 1.0, "alpha": 0.8, "linestyle": ":"})
        ax.plot(np.arange(1, len(f1) + 1), f1, label=name, **style)
    for k, label in enumerate(changes):
        ax.axvline(label, color="grey", linestyle="--", linewidth=0.9, label="policy change" if k == 0 else None)
    ax.set(xlabel="labels of this tenant", ylabel=f"F1 over the last {window} labels", ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def tenant_plot_name(tenant: str) -> str:
    """The file of a tenant's rolling-F1 plot (tenant ids are letters, digits, '_', '.', '-': safe in a name)."""
    return f"tenant-{tenant}.png"


def write_tenant_plots(curves: Any, out: Path, prefix: str = "") -> list[Path]:
    """``plot_tenant_f1`` for every tenant of a multi-tenant replay's ``TenantCurves``."""
    return [
        plot_tenant_f1(
            per,
            curves.changes.get(tenant, []),
            curves.window,
            out / f"{prefix}{tenant_plot_name(tenant)}",
            title=f"{tenant}: rolling F1 of the whole-request decision",
        )
        for tenant, per in curves.f1.items()
    ]
