"""``python -m cadagrad demo``: AdaGrad against SGD on small problems, as numbers, text and figures.

AdaGrad (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization", JMLR 12, 2121-2159) divides each coordinate's step by the root of that coordinate's summed
squared gradients. Five experiments show what that buys and where it fails: an ill-conditioned
quadratic, the accumulator step by step, sparse gradients, rare features, and two limits (a rotated
quadratic; a non-stationary problem, RMSProp's motivation: Tieleman & Hinton 2012, "Lecture 6.5 -
rmsprop", COURSERA: Neural Networks for Machine Learning). A sixth trains l1-regularized logistic
regression on sparse features with AdaGrad, proximal AdaGrad and AdaGrad dual averaging, and counts
the weights each leaves exactly zero.

The package has three parts, used in this order:

- :mod:`cadagrad.demo.experiments` and :mod:`cadagrad.demo.sparsity`: the experiments, each a function
  returning its numbers (:func:`run_experiments` runs all six, about two seconds);
- :mod:`cadagrad.demo.report`: :func:`format_report` turns the numbers into text;
- :mod:`cadagrad.demo.figures`: :func:`write_figures` draws them as PNG files (matplotlib, an optional
  extra, imported there only).

Figures for a documentation page: ``python -m cadagrad demo --out DIR`` or, without the report,
``cadagrad.demo.write_figures(DIR)``, which writes ``FIGURE_NAMES`` into ``DIR``: ``1_quadratic_paths.png``,
``2_accumulator.png``, ``3_sparse_gradients.png``, ``4_rare_features.png``, ``5_limits.png`` and
``6_l1_sparsity.png``.

Nothing here prints: the CLI prints what :func:`run_demo` returns.
"""

from __future__ import annotations

import os
from pathlib import Path

from .experiments import (
    RATE_RATIO_TOLERANCE,
    AccumulatorTable,
    DemoResults,
    NonstationaryResult,
    Path2D,
    QuadraticResult,
    RareFeatureResult,
    RotatedResult,
    SparseResult,
    accumulator_table,
    effective_rates,
    nonstationary,
    quadratic_paths,
    rare_features,
    rotated_quadratic,
    run_experiments,
    sparse_gradients,
)
from .figures import DEFAULT_OUT, FIGURE_NAMES, plots_available, write_figures
from .report import figures_note, format_report
from .sparsity import SPARSITY_OPTIMIZERS, SparsityResult, SparsityRun, l1_sparsity

__all__ = [
    "DEFAULT_OUT",
    "FIGURE_NAMES",
    "RATE_RATIO_TOLERANCE",
    "AccumulatorTable",
    "DemoResults",
    "NonstationaryResult",
    "Path2D",
    "QuadraticResult",
    "RareFeatureResult",
    "RotatedResult",
    "SPARSITY_OPTIMIZERS",
    "SparseResult",
    "SparsityResult",
    "SparsityRun",
    "accumulator_table",
    "effective_rates",
    "format_report",
    "l1_sparsity",
    "nonstationary",
    "plots_available",
    "quadratic_paths",
    "rare_features",
    "rotated_quadratic",
    "run_demo",
    "run_experiments",
    "sparse_gradients",
    "write_figures",
]


def run_demo(out_dir: str | os.PathLike | None = None, *, plots: bool = True) -> str:
    """Run every experiment; write the figures if asked and possible; return the report.

    Parameters
    ----------
    out_dir : path, default ``./cadagrad-demo``
        Where the PNG figures go (created if missing), named as ``FIGURE_NAMES``.
    plots : bool, default True
        Write figures (needs matplotlib; without it the report says how to install it).

    Returns
    -------
    str
        The report, ending with where the figures are or how to get them.
    """
    results = run_experiments()
    out = Path(DEFAULT_OUT if out_dir is None else out_dir)
    written = write_figures(out, results) if plots and plots_available() else None
    return f"{format_report(results)}\n\n{figures_note(out, written, requested=plots)}"
