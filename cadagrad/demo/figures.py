"""The demo's figures: six PNG files drawn from the numbers of :mod:`cadagrad.demo.experiments`.

The only module of cadagrad that uses matplotlib (an optional extra: ``pip install 'cadagrad[demo]'``).
It imports matplotlib inside its functions, with the non-interactive Agg backend, so importing this
module, ``python -m cadagrad demo --no-plots`` and the rest of the demo work without it.

:func:`write_figures` writes the files named in ``FIGURE_NAMES`` (stable names, for documentation
pages that embed them) into one directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .experiments import (
    RATE_RATIO_TOLERANCE,
    X0,
    AccumulatorTable,
    DemoResults,
    NonstationaryResult,
    Path2D,
    QuadraticResult,
    RareFeatureResult,
    RotatedResult,
    SparseResult,
    quadratic_value,
    run_experiments,
)
from .sparsity import SPARSITY_OPTIMIZERS, SparsityResult

#: The figures' directory when none is given (relative to the working directory).
DEFAULT_OUT = Path("cadagrad-demo")
#: The file names :func:`write_figures` writes, in order: one per experiment (5 holds both limits).
FIGURE_NAMES = (
    "1_quadratic_paths.png",
    "2_accumulator.png",
    "3_sparse_gradients.png",
    "4_rare_features.png",
    "5_limits.png",
    "6_l1_sparsity.png",
)


def plots_available() -> bool:
    """Whether matplotlib can be imported.

    Returns
    -------
    bool
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_figures(out_dir: str | os.PathLike = DEFAULT_OUT, results: DemoResults | None = None) -> list[Path]:
    """Write the demo's six figures, ``out_dir / name`` for each name of ``FIGURE_NAMES``.

    The directory is created if missing; files of the same names are replaced. The names do not
    depend on the results, so a documentation page can refer to them.

    Parameters
    ----------
    out_dir : path, default ``./cadagrad-demo``
        The directory.
    results : DemoResults, optional
        The experiments' numbers; by default :func:`~cadagrad.demo.experiments.run_experiments` is run
        (about two seconds).

    Returns
    -------
    list of Path
        The files written, in the order of ``FIGURE_NAMES``.

    Raises
    ------
    ImportError
        If matplotlib is not installed (checked before anything is run or created).
    """
    _pyplot()
    if results is None:
        results = run_experiments()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = iter(FIGURE_NAMES)
    return [
        plot_quadratic(results.quadratic, out / next(names)),
        plot_accumulator(results.quadratic, results.table, out / next(names)),
        plot_sparse(results.sparse, out / next(names)),
        plot_rare_features(results.rare, out / next(names)),
        plot_limits(results.rotated, results.nonstationary, out / next(names)),
        plot_sparsity(results.sparsity, out / next(names)),
    ]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _contour(ax: Any, value_on_grid: Callable[[np.ndarray], np.ndarray], xlim: tuple[float, float],
             ylim: tuple[float, float]) -> None:
    x1 = np.linspace(*xlim, 300)
    x2 = np.linspace(*ylim, 300)
    X1, X2 = np.meshgrid(x1, x2)
    Z = value_on_grid(np.stack([X1, X2], axis=-1))
    ax.contour(X1, X2, Z, levels=np.geomspace(0.05, Z.max(), 18), colors="0.75", linewidths=0.7)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")


_COLORS = {"sgd": "tab:blue", "adagrad": "tab:red", "zigzag": "tab:cyan"}


def _draw_path(ax: Any, run: Path2D, color: str, **kwargs: Any) -> None:
    pts = run.points
    ax.plot(pts[:, 0], pts[:, 1], "-o", color=color, ms=2.5, lw=1.2,
            label=f"{run.label}: f = {run.final_value:.3g}", **kwargs)
    ax.plot(*pts[-1], "s", color=color, ms=6, mec="k")


def plot_quadratic(result: QuadraticResult, path: str | os.PathLike) -> Path:
    """Figure 1: contour plot of the quadratic with the optimizers' paths.

    Parameters
    ----------
    result : QuadraticResult
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.7))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.93)
    _contour(ax, quadratic_value, (-10, 10), (-4, 4))
    if result.sgd_zigzag is not None:
        _draw_path(ax, result.sgd_zigzag, _COLORS["zigzag"], alpha=0.8)
    _draw_path(ax, result.sgd, _COLORS["sgd"])
    _draw_path(ax, result.adagrad, _COLORS["adagrad"])
    ax.plot(*X0, "k*", ms=12, label="start (9, -3)")
    ax.plot(0, 0, "k+", ms=12)
    ax.set_title(f"f(x) = 0.1 x1² + 5 x2²: {result.steps} steps of SGD and AdaGrad (eps inside the root)")
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def plot_accumulator(quadratic: QuadraticResult, table: AccumulatorTable, path: str | os.PathLike) -> Path:
    """Figure 2: AdaGrad's per-coordinate effective rate over the run, and the accumulator step by step.

    Parameters
    ----------
    quadratic : QuadraticResult
    table : AccumulatorTable
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, (ax, tab) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.11, top=0.91, wspace=0.08)
    rates = quadratic.adagrad.rates
    steps = np.arange(1, len(rates) + 1)
    ax.semilogy(steps, rates[:, 0], color="tab:green", label="x1 (flat, curvature 0.2)")
    ax.semilogy(steps, rates[:, 1], color="tab:purple", label="x2 (steep, curvature 10)")
    ax.axhline(quadratic.sgd.lr, color=_COLORS["sgd"], ls="--", lw=1,
               label=f"SGD's fixed lr = {quadratic.sgd.lr:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("effective rate  lr / sqrt(G + eps)")
    ax.set_title(f"AdaGrad (lr = {quadratic.adagrad.lr:g}) on the quadratic: one rate per coordinate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)

    tab.axis("off")
    cells = [[f"{i + 1}", f"{table.grads[i]:g}", f"{table.accumulators[i]:g}", f"{table.roots[i]:.3f}",
              f"{table.rates[i]:.5f}", f"{table.step_sizes[i]:.5f}"] for i in range(len(table.grads))]
    drawn = tab.table(cellText=cells, colLabels=["step", "g", "G", "√G", "α/√G", "step size"],
                      loc="center", cellLoc="right")
    drawn.scale(1, 1.6)
    tab.set_title(f"Step by step: α = {table.lr:g}, ε = {table.eps:g} outside the root, by cadagrad")
    return _save(fig, path)


def plot_sparse(result: SparseResult, path: str | os.PathLike) -> Path:
    """Figure 3: x2's effective rate against the step and against its own update count, and x2.

    Parameters
    ----------
    result : SparseResult
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.84, wspace=0.25)
    colors = plt.cm.viridis(np.linspace(0.0, 0.8, len(result.runs)))
    for run, color in zip(result.runs, colors):
        steps = np.arange(1, len(run.rates) + 1)
        label = f"p = {run.p:g} ({int(run.updates[-1])} updates)"
        axes[0].plot(steps, run.rates, drawstyle="steps-post", color=color, label=label)
        received = np.diff(np.concatenate([[0], run.updates])) == 1
        axes[1].plot(run.updates[received], run.rates[received], "o-", ms=3, color=color, label=label)
        axes[2].semilogy(np.arange(len(run.x2)), np.abs(run.x2), drawstyle="steps-post", color=color,
                         label=label)
    axes[0].set(xlabel="step", ylabel="x2's effective rate", title="x2's rate against the step")
    axes[1].set(xlabel="x2 gradients received", ylabel="x2's effective rate",
                title="... against x2's own updates: one curve")
    axes[2].set(xlabel="step", ylabel="|x2|", title="|x2|: each update received is a full-size step")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sparse gradients: x2's gradient zeroed with probability p (AdaGrad lr = {result.lr:g})")
    return _save(fig, path)


def plot_rare_features(result: RareFeatureResult, path: str | os.PathLike) -> Path:
    """Figure 4: the rare feature's weight error for SGD and AdaGrad, and the measured rate ratio.

    Parameters
    ----------
    result : RareFeatureResult
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.11, top=0.86, wspace=0.2)
    idx = _log_indices(result.steps)
    steps = idx + 1
    for opt, err, lr in (("sgd", result.sgd_rms_error, result.sgd_lr),
                         ("adagrad", result.adagrad_rms_error, result.adagrad_lr)):
        name = "SGD" if opt == "sgd" else "AdaGrad"
        ax.loglog(steps, err[idx, 1], color=_COLORS[opt], lw=2,
                  label=f"rare (p2 = {result.p[1]:g}), {name} lr = {lr:g}")
        ax.loglog(steps, err[idx, 0], color=_COLORS[opt], lw=1, ls="--",
                  label=f"frequent (p1 = {result.p[0]:g}), {name}")
    ax.set(xlabel="step (examples seen)", ylabel="RMS of w - β over the replicas",
           title=f"Weight errors ({result.replicas} replicas)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ratio = result.rate_ratio[idx]
    bx.semilogx(steps, ratio[:, 0], color=_COLORS["adagrad"],
                label=f"measured (mean), effect spread s = {result.effect_spread:g}")
    bx.fill_between(steps, ratio[:, 1], ratio[:, 2], color=_COLORS["adagrad"], alpha=0.2,
                    label="10-90% of the replicas")
    bx.semilogx(steps, result.noiseless_ratio[idx], color="0.5", lw=1, label="measured (mean), s = 0")
    bx.axhline(result.prediction, color="k", ls="--",
               label=f"prediction |β2|/|β1|·√(p2/p1) = {result.prediction:.3f}")
    bx.axhspan(result.prediction * (1 - RATE_RATIO_TOLERANCE), result.prediction * (1 + RATE_RATIO_TOLERANCE),
               color="k", alpha=0.08, label=f"±{RATE_RATIO_TOLERANCE:.0%}")
    bx.set_yscale("log")
    bx.set(xlabel="step (examples seen)", ylabel="rate(frequent) / rate(rare)",
           title="AdaGrad's ratio of effective rates")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=8)
    fig.suptitle(f"Rare and frequent features: β = ({result.beta[0]:g}, {result.beta[1]:g}), "
                 f"per-example effects β·(1 + {result.effect_spread:g}·N(0, 1))")
    return _save(fig, path)


def _log_indices(n: int, points: int = 600) -> np.ndarray:
    """About ``points`` distinct indices in [0, n), spaced evenly on a log scale."""
    return np.unique(np.geomspace(1, n, points).astype(np.int64) - 1)


def plot_limits(rotated: RotatedResult, ns: NonstationaryResult, path: str | os.PathLike) -> Path:
    """Figure 5: the rotated quadratic's paths, and the non-stationary run's error and rate.

    Parameters
    ----------
    rotated : RotatedResult
    ns : NonstationaryResult
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1.15, 1, 1]})
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1, top=0.92, wspace=0.2)
    H = rotated.hessian
    _contour(axes[0], lambda X: 0.5 * np.einsum("...i,ij,...j->...", X, H, X), (-1, 10), (-1, 8))
    for name in ("sgd", "adagrad"):
        _draw_path(axes[0], rotated.rotated[name], _COLORS[name])
        aligned = rotated.aligned[name]
        axes[0].plot([], [], " ", label=f"(aligned: f = {aligned.final_value:.3g})")
    axes[0].plot(*rotated.rotated["sgd"].points[0], "k*", ms=12)
    axes[0].set_title("Rotated by 45°: a diagonal preconditioner cannot undo it")
    axes[0].legend(loc="lower right", fontsize=8)

    steps = np.arange(1, len(ns.errors["carried"]) + 1)
    for mode, color in (("restarted", "tab:orange"), ("carried", _COLORS["adagrad"])):
        label = "AdaGrad, G carried over" if mode == "carried" else "AdaGrad restarted at the switch (G = 0)"
        axes[1].semilogy(steps, ns.errors[mode], color=color, label=label)
        axes[2].semilogy(steps, ns.rates[mode], color=color, label=label)
    for ax in axes[1:]:
        ax.axvline(ns.switch, color="k", ls=":", lw=1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlabel("step")
    axes[1].set(ylabel="|x - target|",
                title=f"Non-stationary: h = {ns.curvatures[0]:g} → {ns.curvatures[1]:g}, target "
                      f"{ns.targets[0]:g} → {ns.targets[1]:g} at step {ns.switch}")
    axes[2].set(ylabel="effective rate", title="G only grows: the carried rate never recovers")
    return _save(fig, path)


_SPARSITY_COLORS = {"Adagrad": _COLORS["adagrad"], "ProximalAdagrad": "tab:green", "AdagradDA": "tab:purple"}


def plot_sparsity(result: SparsityResult, path: str | os.PathLike) -> Path:
    """Figure 6: log-loss against the fraction of exact zeros, and that fraction against l1.

    Parameters
    ----------
    result : SparsityResult
    path : path
        The PNG to write.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.11, top=0.86, wspace=0.18)
    for name in SPARSITY_OPTIMIZERS:
        runs, color = result.curve(name), _SPARSITY_COLORS[name]
        zeros = [r.zero_fraction for r in runs]
        label = "Adagrad + l1·sign(w)" if name == "Adagrad" else name
        ax.plot(zeros, [r.test_loss for r in runs], "-o", color=color, ms=5, label=f"{label}, held-out")
        ax.plot(zeros, [r.train_loss for r in runs], "--o", color=color, ms=4, mfc="none", lw=1,
                label=f"{label}, train")
        bx.plot(result.l1s, zeros, "-o", color=color, ms=5, label=f"{label}, dense steps")
        if name != "Adagrad":
            bx.plot(result.l1s, [r.zero_fraction for r in result.curve(name, rows=True)], ":s", color=color,
                    ms=4, mfc="none", label=f"{name}, step_rows (active features only)")
    for r in result.curve("AdagradDA"):
        ax.annotate(f"l1 = {r.l1:g}", (r.zero_fraction, r.test_loss), textcoords="offset points",
                    xytext=(-6, 7), ha="right", fontsize=7, color=_SPARSITY_COLORS["AdagradDA"])
    ax.axhline(result.planted_test_loss, color="k", ls=":", lw=1,
               label=f"planted weights, held-out ({result.planted_test_loss:.3f})")
    ax.axhline(np.log(2), color="0.5", ls=":", lw=1, label="w = 0 (log 2)")
    ax.margins(y=0.1)
    ax.set(xlabel="fraction of weights exactly 0", ylabel="mean log-loss",
           title="Loss against sparsity, one point per l1")
    bx.set_xscale("symlog", linthresh=min(x for x in result.l1s if x > 0))
    bx.set(xlabel="l1 (symmetric log scale: 0 on the left)", ylabel="fraction of weights exactly 0",
           title="Exact zeros as l1 grows")
    for axis in (ax, bx):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"l1-regularized logistic regression: {result.features} rare binary features, "
                 f"{result.informative} informative; {result.steps} minibatch steps, lr = {result.lr:g}")
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
