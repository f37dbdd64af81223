"""The demo's text report: the numbers of :mod:`cadagrad.demo.experiments`, formatted.

Formatting only: every number printed here was measured by an experiment; nothing is computed beyond
the arithmetic of the explanations (SGD's per-step factors ``1 - lr * curvature``) and percentiles of
recorded values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .experiments import (
    RATE_RATIO_TOLERANCE,
    AccumulatorTable,
    DemoResults,
    NonstationaryResult,
    QuadraticResult,
    RareFeatureResult,
    RotatedResult,
    SparseResult,
)
from .sparsity import SPARSITY_OPTIMIZERS, SparsityResult


def _point(x: np.ndarray) -> str:
    return f"({x[0]:+.4f}, {x[1]:+.4g})"


def format_report(results: DemoResults) -> str:
    """The demo's text report: what each experiment measured.

    Parameters
    ----------
    results : DemoResults
        The numbers, from :func:`cadagrad.demo.experiments.run_experiments`.

    Returns
    -------
    str
        Lines of text, without a final newline.
    """
    return "\n\n".join([
        _report_quadratic(results.quadratic),
        _report_accumulator(results.quadratic, results.table),
        _report_sparse(results.sparse),
        _report_rare(results.rare),
        _report_limits(results.rotated, results.nonstationary),
        _report_sparsity(results.sparsity),
    ])


def _report_quadratic(q: QuadraticResult) -> str:
    lines = [f"1. f(x) = 0.1*x1^2 + 5*x2^2 from x0 = (9, -3), {q.steps} steps (float64):"]
    for run in [q.sgd, q.adagrad] + ([q.sgd_zigzag] if q.sgd_zigzag is not None else []):
        lines.append(f"   {run.label:<17} ends at {_point(run.final)}   f = {run.final_value:.4g}")
    lr = q.sgd.lr
    lines.append(f"   SGD lr={lr:g} multiplies x2 by {1 - lr * 10:g} a step (straight down the steep wall) "
                 f"and x1 by {1 - lr * 0.2:g} (a crawl);")
    if q.sgd_zigzag is not None:
        z = q.sgd_zigzag.lr
        lines.append(f"   at lr={z:g} it zig-zags across x2 ({1 - z * 10:+g} a step); past lr=0.2 it "
                     "diverges.")
    first = q.adagrad.points[1] - q.adagrad.points[0]
    lines.append(f"   AdaGrad's first step is ({first[0]:+.3f}, {first[1]:+.3f}): every coordinate moves by "
                 "~lr, down the valley.")
    return "\n".join(lines)


def _report_accumulator(q: QuadraticResult, tab: AccumulatorTable) -> str:
    rates = q.adagrad.rates
    lines = [
        "2. The accumulator: AdaGrad's effective rate lr/sqrt(G + eps) per coordinate, same run:",
        f"   after step 1: x1 {rates[0, 0]:.4g}, x2 {rates[0, 1]:.4g};  after step {q.steps}: "
        f"x1 {rates[-1, 0]:.4g}, x2 {rates[-1, 1]:.4g} (steep x2: smaller)",
        f"   One parameter, step by step, by cadagrad (alpha = {tab.lr:g}, eps = {tab.eps:g} outside "
        "the root):",
        "   step    g        G    sqrt(G)   alpha/sqrt(G)   step size",
    ]
    for i in range(len(tab.grads)):
        lines.append(f"   {i + 1:>4} {tab.grads[i]:>4g} {tab.accumulators[i]:>8g} {tab.roots[i]:>10.4f}"
                     f" {tab.rates[i]:>15.5f} {tab.step_sizes[i]:>11.5f}")
    lines.append("   (worked by hand, rounding sqrt(G) before dividing, the rates read 0.01, 0.0075, 0.0057, "
                 "..., 0.0045)")
    return "\n".join(lines)


def _report_sparse(sp: SparseResult) -> str:
    steps = len(sp.runs[0].rates)
    shown = [t for t in (10, 20, 50, steps) if t <= steps]
    lines = [
        f"3. Sparse gradients: x2's gradient zeroed with probability p ({steps} steps, "
        f"AdaGrad lr={sp.lr:g}):",
        f"   {'p':<5}{'x2 updates':>11}" + "".join(f"{'rate@' + str(t):>10}" for t in shown)
        + f"{'x2 at the end':>15}",
    ]
    for run in sp.runs:
        lines.append(f"   {run.p:<5g}{int(run.updates[-1]):>11}"
                     + "".join(f"{run.rates[t - 1]:>10.4f}" for t in shown) + f"{run.x2[-1]:>+15.3g}")
    lines += [
        "   (rate@t: x2's effective rate after step t.) G counts only the gradients a coordinate",
        "   receives, so a rarely updated x2 keeps a higher rate; after n updates it is the same for any p.",
    ]
    return "\n".join(lines)


def _report_rare(rare: RareFeatureResult) -> str:
    counts = rare.counts.mean(axis=0)
    lo, hi = np.percentile(rare.final_ratios, [10, 90])
    lines = [
        f"4. Rare features: p = {rare.p[0]:g} and {rare.p[1]:g} (~{counts[0]:.0f} and ~{counts[1]:.0f} "
        f"activations in {rare.steps} examples),",
        f"   beta = ({rare.beta[0]:g}, {rare.beta[1]:g}), effect spread s = {rare.effect_spread:g}; "
        f"errors are RMS over {rare.replicas} replicas:",
    ]
    for when in (rare.steps // 20, rare.steps // 4, rare.steps):
        lines.append(f"   rare |w2 - beta2| after {when:>6} steps: SGD lr={rare.sgd_lr:g} "
                     f"{rare.sgd_rms_error[when - 1, 1]:.3f}, AdaGrad lr={rare.adagrad_lr:g} "
                     f"{rare.adagrad_rms_error[when - 1, 1]:.3f}")
    lines += [
        f"   frequent |w1 - beta1| at the end: SGD {rare.sgd_rms_error[-1, 0]:.3f}, "
        f"AdaGrad {rare.adagrad_rms_error[-1, 0]:.3f}",
        f"   AdaGrad's rate(frequent)/rate(rare) = {rare.measured_ratio:.3f} (mean; 10-90% of single "
        f"replicas: {lo:.3f} to {hi:.3f}),",
        f"   predicted |b2|/|b1|*sqrt(p2/p1) = {rare.prediction:.3f}: {rare.relative_deviation:+.1%} "
        f"(tolerance {RATE_RATIO_TOLERANCE:.0%}); the rare rate is {1 / rare.measured_ratio:.1f}x.",
        f"   (With s = 0 a learned weight stops feeding G: ratio {rare.noiseless_ratio[-1]:.3f}, "
        "far from the prediction.)",
    ]
    return "\n".join(lines)


def _report_limits(rot: RotatedResult, ns: NonstationaryResult) -> str:
    a, r = rot.aligned, rot.rotated
    steps = len(a["sgd"].points) - 1
    lines = [
        f"5. Limits. The same quadratic rotated by 45 degrees ({steps} steps):",
        f"   SGD     aligned f = {a['sgd'].final_value:.4g}, rotated f = {r['sgd'].final_value:.4g} "
        "(rotation-invariant)",
        f"   AdaGrad aligned f = {a['adagrad'].final_value:.4g}, rotated f = {r['adagrad'].final_value:.4g} "
        "(a diagonal preconditioner cannot undo it)",
        f"   Non-stationary: h = {ns.curvatures[0]:g} towards {ns.targets[0]:g} for {ns.switch} steps, then "
        f"h = {ns.curvatures[1]:g} towards {ns.targets[1]:g}:",
        f"   at the switch the rate is {ns.rates['carried'][ns.switch - 1]:.4g}; |x - target| goes "
        f"{ns.errors_at_switch['carried']:.3g} -> {ns.final_errors['carried']:.3g} in "
        f"{len(ns.errors['carried']) - ns.switch} steps (stalled);",
        f"   a fresh AdaGrad from the switch gets to {ns.final_errors['restarted']:.3g}.",
        "   G only grows, so the rate never recovers: RMSProp replaces the sum by a decaying average.",
    ]
    return "\n".join(lines)


def _report_sparsity(sp: SparsityResult) -> str:
    lines = [
        f"6. l1-regularized logistic regression: {sp.features} binary features, each active in "
        f"{sp.p_range[0]:.1%} to {sp.p_range[1]:.0%} of the examples",
        f"   (~{sp.active_per_example:.0f} per example); {sp.informative} of them, active in "
        f"{sp.informative_p[0]:.0%} to {sp.informative_p[1]:.0%}, have planted weights +-{sp.weight:g}, the "
        "rest 0.",
        f"   {sp.train_size} training and {sp.test_size} held-out examples; minibatches of {sp.batch}, "
        f"{sp.epochs} epochs ({sp.steps} steps), lr = {sp.lr:g}, from w = 0.",
        "   Mean log-loss train / held-out, % of weights exactly 0, informative weights kept (nonzero):",
        f"   {'l1':<8}" + "".join(f"{name + (' +l1*sign(w)' if name == 'Adagrad' else ''):<29}"
                                  for name in SPARSITY_OPTIMIZERS).rstrip(),
    ]
    curves = {name: sp.curve(name) for name in SPARSITY_OPTIMIZERS}
    for i, l1 in enumerate(sp.l1s):
        cells = [f"{r.train_loss:.3f} / {r.test_loss:.3f} {r.zero_fraction:6.1%} {r.informative_kept:>3}"
                 for r in (curves[name][i] for name in SPARSITY_OPTIMIZERS)]
        lines.append(f"   {l1:<8g}" + "".join(f"{c:<29}" for c in cells).rstrip())
    ada, prox, da = (curves[name] for name in SPARSITY_OPTIMIZERS)
    best_ada = min(ada, key=lambda r: r.test_loss)
    best_da = min(da, key=lambda r: r.test_loss)
    at = sp.l1s.index(best_da.l1)
    penalized = range(1, len(sp.l1s))
    most = all(da[i].zero_fraction >= prox[i].zero_fraction for i in penalized)
    ada_at = ada[sp.l1s.index(best_ada.l1)]
    lines += [
        f"   The planted weights score {sp.planted_test_loss:.3f} held-out; w = 0 scores log 2 = "
        f"{np.log(2):.3f}.",
        "   Adagrad, handed l1 as the subgradient l1*sign(w), never lands a weight on 0 "
        f"({max(r.zero_fraction for r in ada):.1%} at every l1).",
        "   AdagradDA zeroes a weight while its gradient sum stays within l1*t (t steps), and gives "
        f"{'the most' if most else 'more'}",
        f"   zeros{' at every l1 > 0' if most else ''}: at l1 = {best_da.l1:g}, its best held-out loss, "
        f"{best_da.zero_fraction:.1%} of the weights are 0, for",
        f"   {best_da.test_loss:.3f} held-out and {best_da.train_loss:.3f} train against Adagrad's best, "
        f"{ada_at.test_loss:.3f} and {ada_at.train_loss:.3f} (l1 = {best_ada.l1:g}, no zeros).",
        f"   ProximalAdagrad zeroes {prox[at].zero_fraction:.1%} there: when a noise feature is active its "
        "gradient exceeds l1 and moves",
        "   the weight off 0, and the shrinking by l1*lr/sqrt(G) a step takes a while to bring it back.",
    ]
    rows = {r.optimizer: r for r in sp.row_runs if r.l1 == best_da.l1}
    lines += [
        "   Row steps (step_rows with the batch's active features) leave a feature's penalty out while it "
        "is inactive:",
        f"   at l1 = {best_da.l1:g} ProximalAdagrad zeroes {rows['ProximalAdagrad'].zero_fraction:.1%} "
        f"(dense steps: {prox[at].zero_fraction:.1%}), AdagradDA {rows['AdagradDA'].zero_fraction:.1%} "
        f"(dense: {da[at].zero_fraction:.1%};",
        "   its threshold l1*t counts the steps a feature missed).",
    ]
    return "\n".join(lines)


def figures_note(
    out_dir: str | os.PathLike, written: Sequence[Path] | None, *, requested: bool = True
) -> str:
    """The report's last line: where the figures are, or why there are none and how to get them.

    Parameters
    ----------
    out_dir : path
        The figures' directory.
    written : sequence of Path or None
        The files written; None when matplotlib is missing.
    requested : bool, default True
        False when figures were turned off (``--no-plots``).

    Returns
    -------
    str
    """
    if not requested:
        return "Figures skipped (--no-plots)."
    if written is None:
        return ("No figures: matplotlib is not installed. Install it with  pip install 'cadagrad[demo]'  "
                "(or  pip install matplotlib), then run  python -m cadagrad demo  again.")
    return f"Figures ({len(written)}) written to {Path(out_dir)}/: " + ", ".join(p.name for p in written)
