"""``python -m cadagrad demo``: AdaGrad against SGD on small problems, as numbers and figures.

Five experiments, each a function that runs cadagrad's compiled optimizers (float64) and returns its
numbers in a small dataclass; :func:`report` turns them into text and :func:`plot_all` into PNG figures
(matplotlib, an optional extra, imported only there, with the Agg backend). Nothing here prints: the
CLI prints what :func:`run_demo` returns.

1. :func:`quadratic_paths`: the ill-conditioned quadratic ``f(x) = 0.1 x1^2 + 5 x2^2`` from (9, -3),
   SGD against AdaGrad (the seed notebook's rule, eps inside the root).
2. :func:`lesson_table`: the accumulator at work, the lesson's table for gradients 10, 9, 11, 10, 10;
   the per-coordinate effective rates of experiment 1 come with :func:`quadratic_paths`.
3. :func:`sparse_gradients`: the same quadratic with the x2 gradient zeroed with probability p.
4. :func:`rare_features`: a linear model on a frequent and a rare binary feature.
5. :func:`rotated_quadratic` and :func:`nonstationary`: where AdaGrad's diagonal, ever-growing
   accumulator fails.

The whole demo takes about a second without figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .optim import SGD, Adagrad

#: The seed notebook's AdaGrad: ``G += g*g; x -= eta * g / sqrt(G + 1e-8)``.
NOTEBOOK_ADAGRAD = {"eps": 1e-8, "eps_inside_sqrt": True}
#: Curvatures of ``f(x) = 0.1 x1^2 + 5 x2^2``: its gradient is ``(0.2 x1, 10 x2)``.
CURVATURE = np.array([0.2, 10.0])
X0 = (9.0, -3.0)
#: Relative tolerance of the rare-feature rate ratio against its prediction (see :func:`rare_features`).
RATE_RATIO_TOLERANCE = 0.10
DEFAULT_OUT = Path("cadagrad-demo")
FIGURE_NAMES = (
    "1_quadratic_paths.png",
    "2_accumulator.png",
    "3_sparse_gradients.png",
    "4_rare_features.png",
    "5_limits.png",
)


def quadratic_value(x: np.ndarray) -> np.ndarray | float:
    """``f(x) = 0.1 x1^2 + 5 x2^2`` (for arrays of shape (..., 2), elementwise over the leading axes)."""
    x = np.asarray(x)
    return 0.1 * x[..., 0] ** 2 + 5.0 * x[..., 1] ** 2


def quadratic_grad(x: np.ndarray) -> np.ndarray:
    """Gradient ``(0.2 x1, 10 x2)`` of :func:`quadratic_value`, the notebook's expression."""
    return CURVATURE * x


def effective_rates(opt: Adagrad) -> np.ndarray:
    """AdaGrad's per-element effective learning rate ``lr / d`` now (a copy, one array per param).

    ``d`` is ``sqrt(G) + eps``, or ``sqrt(G + eps)`` with ``eps_inside_sqrt``, from the optimizer's own
    accumulator (``opt.sums``); the next step moves an element by this rate times its gradient.
    With ``lr_decay`` the rate of step ``t`` is smaller; the demo uses none.
    """
    return _rates(opt.sums[0], opt.lr, opt.eps, opt.eps_inside_sqrt)


def _rates(G: np.ndarray, lr: float, eps: float, eps_inside_sqrt: bool) -> np.ndarray:
    d = np.sqrt(G + eps) if eps_inside_sqrt else np.sqrt(G) + eps
    return lr / d


# --------------------------------------------------------------------------------------------------
# 1 and 2: the ill-conditioned quadratic, and the accumulator at work


@dataclass(frozen=True)
class Path2D:
    """One optimizer's run on a 2-D problem.

    Attributes
    ----------
    label : str
        Legend text, e.g. ``"SGD lr=0.05"``.
    lr : float
        Its learning rate.
    points : ndarray, shape (steps + 1, 2)
        The start and the point after every step.
    final_value : float
        The objective at the last point.
    rates : ndarray, shape (steps, 2), or None
        For AdaGrad, the per-coordinate effective rate after every step (``lr / sqrt(G + eps)``).
    """

    label: str
    lr: float
    points: np.ndarray
    final_value: float
    rates: np.ndarray | None = None

    @property
    def final(self) -> np.ndarray:
        """The last point."""
        return self.points[-1]


@dataclass(frozen=True)
class QuadraticResult:
    """Experiment 1: SGD and AdaGrad on ``f(x) = 0.1 x1^2 + 5 x2^2`` from (9, -3).

    Attributes
    ----------
    sgd, adagrad : Path2D
        The notebook's runs: SGD lr=0.05, AdaGrad lr=0.5 (eps = 1e-8 inside the root).
    sgd_zigzag : Path2D or None
        SGD at a rate above 1/10 (the steep axis' curvature), where it zig-zags across that axis.
    steps : int
        Steps taken by each.
    """

    sgd: Path2D
    adagrad: Path2D
    sgd_zigzag: Path2D | None
    steps: int


def _run_2d(opt_factory, grad, x0, steps: int, value, label: str, lr: float, track_rates: bool) -> Path2D:
    x = np.array(x0, dtype=np.float64)
    opt = opt_factory(x)
    points = np.empty((steps + 1, 2))
    points[0] = x
    rates = np.empty((steps, 2)) if track_rates else None
    for t in range(steps):
        opt.step(grad(x))
        points[t + 1] = x
        if track_rates:
            rates[t] = effective_rates(opt)
    return Path2D(label, lr, points, float(value(x)), rates)


def quadratic_paths(
    steps: int = 100,
    *,
    sgd_lr: float = 0.05,
    adagrad_lr: float = 0.5,
    zigzag_lr: float | None = 0.15,
) -> QuadraticResult:
    """Run SGD and AdaGrad on ``f(x) = 0.1 x1^2 + 5 x2^2`` from ``x0 = (9, -3)``.

    SGD multiplies each coordinate by ``1 - lr * curvature`` a step: at lr = 0.05 that is 0.99 along the
    flat axis (it crawls: ``x1 = 9 * 0.99^t``) and 0.5 across the steep one (it drops straight to the
    valley floor; zig-zagging needs ``lr > 1/10``, divergence ``lr > 2/10``). ``zigzag_lr`` adds a
    third run at such a rate (0.15: a factor -0.5 across the steep axis). AdaGrad divides each
    coordinate's step by the root of its own summed squared gradients, so both coordinates first move
    by about ``lr`` (a diagonal heading down the valley), whatever their curvatures.

    Parameters
    ----------
    steps : int, default 100
        Steps of each optimizer.
    sgd_lr, adagrad_lr : float
        The notebook's rates.
    zigzag_lr : float or None, default 0.15
        Rate of the extra, zig-zagging SGD run; None leaves it out.

    Returns
    -------
    QuadraticResult
        The paths; ``adagrad.rates`` holds the per-coordinate effective rates of experiment 2.
    """
    def run_sgd(lr):
        return _run_2d(lambda x: SGD(x, lr=lr), quadratic_grad, X0, steps, quadratic_value,
                       f"SGD lr={lr:g}", lr, track_rates=False)

    adagrad = _run_2d(lambda x: Adagrad(x, lr=adagrad_lr, **NOTEBOOK_ADAGRAD), quadratic_grad, X0, steps,
                      quadratic_value, f"AdaGrad lr={adagrad_lr:g}", adagrad_lr, track_rates=True)
    return QuadraticResult(
        sgd=run_sgd(sgd_lr),
        adagrad=adagrad,
        sgd_zigzag=None if zigzag_lr is None else run_sgd(zigzag_lr),
        steps=steps,
    )


@dataclass(frozen=True)
class LessonTable:
    """Experiment 2: the lesson's worked table, one row per step, every number from cadagrad.

    Attributes
    ----------
    lr, eps : float
        alpha = 0.1 and eps = 1e-8 (outside the root, as the lesson and PyTorch).
    grads : ndarray
        The gradients 10, 9, 11, 10, 10.
    accumulators : ndarray
        ``G`` after each step, read from the optimizer (``opt.sums``).
    roots : ndarray
        ``sqrt(G)``.
    rates : ndarray
        The effective rate ``alpha / (sqrt(G) + eps)`` of each step.
    step_sizes : ndarray
        How far the parameter actually moved in each step (measured on the parameter).
    """

    lr: float
    eps: float
    grads: np.ndarray
    accumulators: np.ndarray
    roots: np.ndarray
    rates: np.ndarray
    step_sizes: np.ndarray


def lesson_table(grads: tuple[float, ...] = (10.0, 9.0, 11.0, 10.0, 10.0), lr: float = 0.1,
                 eps: float = 1e-8) -> LessonTable:
    """The lesson's table: one parameter fed the gradients 10, 9, 11, 10, 10 with alpha = 0.1.

    The lesson prints effective rates 0.01, 0.0075, 0.0057, ..., 0.0045; it rounds ``sqrt(G)`` by hand
    before dividing (0.1 / 13.4 = 0.0075 where 0.1 / 13.454 = 0.00743), so its figures agree with these
    to one unit of their last digit.

    Parameters
    ----------
    grads : tuple of float
        The gradient of each step.
    lr, eps : float
        alpha and eps (outside the root).

    Returns
    -------
    LessonTable
    """
    w = np.zeros(1)
    opt = Adagrad(w, lr=lr, eps=eps)
    rows = []
    for g in grads:
        before = w[0]
        opt.step(np.array([g]))
        G = opt.sums[0][0]
        rows.append((G, np.sqrt(G), effective_rates(opt)[0], before - w[0]))
    G, root, rate, size = (np.array(col) for col in zip(*rows))
    return LessonTable(lr, eps, np.array(grads, dtype=np.float64), G, root, rate, size)


# --------------------------------------------------------------------------------------------------
# 3: simulated sparse gradients


@dataclass(frozen=True)
class SparseRun:
    """One run of experiment 3 at drop probability ``p``.

    Attributes
    ----------
    p : float
        Probability that a step's x2 gradient is zeroed.
    updates : ndarray of int, shape (steps,)
        x2 gradients received up to and including each step.
    rates : ndarray, shape (steps,)
        x2's effective rate after each step; NaN before its first gradient (then ``G = 0`` and the
        rate is ``lr / sqrt(eps)``, a number no step ever used).
    x2 : ndarray, shape (steps + 1,)
        x2 from the start.
    """

    p: float
    updates: np.ndarray
    rates: np.ndarray
    x2: np.ndarray

    @property
    def final_rate(self) -> float:
        """x2's effective rate after the last step."""
        return float(self.rates[-1])


@dataclass(frozen=True)
class SparseResult:
    """Experiment 3: AdaGrad (lr = 0.5, the notebook's eps) with the x2 gradient dropped at random.

    Attributes
    ----------
    runs : tuple of SparseRun
        One per p, in the order given.
    lr : float
        AdaGrad's rate.
    seed : int
        Seed of the drops.
    """

    runs: tuple[SparseRun, ...]
    lr: float
    seed: int


def sparse_gradients(ps: tuple[float, ...] = (0.0, 0.5, 0.9), steps: int = 100, *, lr: float = 0.5,
                     seed: int = 5) -> SparseResult:
    """AdaGrad on the quadratic with the x2 gradient zeroed with probability ``p`` at each step.

    A zero gradient adds nothing to ``G`` and moves nothing, so x2's accumulator counts only the
    gradients it receives: its rate is a function of its own update count, not of the step number.
    At any step a rarely updated x2 has the higher rate, and x2 after n updates is the same whatever p
    (the coordinates of this quadratic do not interact). The same uniform draws serve every p (x2 is
    dropped when the draw is below p), so a larger p drops a superset of the steps.

    Parameters
    ----------
    ps : tuple of float, default (0, 0.5, 0.9)
        Drop probabilities.
    steps : int, default 100
        Steps per run.
    lr : float, default 0.5
        AdaGrad's rate (eps = 1e-8 inside the root, as the notebook).
    seed : int
        Seed of the drops.

    Returns
    -------
    SparseResult
    """
    draws = np.random.default_rng(seed).random(steps)
    runs = []
    for p in ps:
        keep = draws >= p
        x = np.array(X0)
        opt = Adagrad(x, lr=lr, **NOTEBOOK_ADAGRAD)
        x2 = np.empty(steps + 1)
        x2[0] = x[1]
        rates = np.empty(steps)
        for t in range(steps):
            g = quadratic_grad(x)
            if not keep[t]:
                g[1] = 0.0
            opt.step(g)
            x2[t + 1] = x[1]
            rates[t] = effective_rates(opt)[1]
        updates = np.cumsum(keep)
        rates[updates == 0] = np.nan
        runs.append(SparseRun(float(p), updates, rates, x2))
    return SparseResult(tuple(runs), lr, seed)


# --------------------------------------------------------------------------------------------------
# 4: rare and frequent features


@dataclass(frozen=True)
class RareFeatureResult:
    """Experiment 4: a linear model on a frequent and a rare binary feature, in independent replicas.

    Attributes
    ----------
    p, beta : (float, float)
        Activation probabilities (frequent, rare) and true weights.
    effect_spread : float
        Relative per-example spread ``s`` of each effect.
    steps, replicas, seed : int
    counts : ndarray of int, shape (replicas, 2)
        How often each feature was active in each replica.
    sgd_rms_error, adagrad_rms_error : ndarray, shape (steps, 2)
        Root mean square over the replicas of ``w_j - beta_j`` after every step.
    rate_ratio : ndarray, shape (steps, 3)
        AdaGrad's effective rate of the frequent feature over that of the rare one after every step:
        mean, 10th and 90th percentile over the replicas (NaN until every replica has seen both).
    final_ratios : ndarray, shape (replicas,)
        Each replica's ratio after the last step.
    noiseless_ratio : ndarray, shape (steps,)
        Mean ratio of a run on the same features with ``s = 0`` (no per-example spread).
    prediction : float
        ``|beta2| / |beta1| * sqrt(p2 / p1)``.
    sgd_lr, adagrad_lr : float
    """

    p: tuple[float, float]
    beta: tuple[float, float]
    effect_spread: float
    steps: int
    replicas: int
    seed: int
    counts: np.ndarray
    sgd_rms_error: np.ndarray
    adagrad_rms_error: np.ndarray
    rate_ratio: np.ndarray
    final_ratios: np.ndarray
    noiseless_ratio: np.ndarray
    prediction: float
    sgd_lr: float
    adagrad_lr: float

    @property
    def measured_ratio(self) -> float:
        """The replicas' mean rate ratio after the last step."""
        return float(self.final_ratios.mean())

    @property
    def relative_deviation(self) -> float:
        """``measured_ratio / prediction - 1``."""
        return self.measured_ratio / self.prediction - 1.0


def _train_linear(opt, w: np.ndarray, X: np.ndarray, y: np.ndarray, sums: np.ndarray | None) -> np.ndarray:
    """Per-example steps on ``(x . w - y)^2 / 2`` for every replica at once; returns ``w`` after each step.

    ``w`` has shape (replicas, d) and the optimizers' rule is elementwise, so one ``step`` advances
    every replica independently. If ``sums`` is given, the accumulator is copied into it after each step.
    """
    steps, replicas, d = X.shape
    weights = np.empty((steps, replicas, d))
    g = np.empty((replicas, d))
    r = np.empty(replicas)
    G = opt.sums[0] if sums is not None else None
    for t in range(steps):
        x = X[t]
        np.multiply(x, w, out=g)
        np.subtract(g.sum(axis=1), y[t], out=r)
        np.multiply(x, r[:, None], out=g)        # gradient x_j (x . w - y)
        opt.step(g)
        weights[t] = w
        if G is not None:
            sums[t] = G
    return weights


def _rate_ratio(opt: Adagrad, sums: np.ndarray) -> np.ndarray:
    """rate(frequent) / rate(rare) for every step and replica, from the recorded accumulators."""
    rates = _rates(sums, opt.lr, opt.eps, opt.eps_inside_sqrt)
    return rates[..., 0] / rates[..., 1]


def rare_features(
    p: tuple[float, float] = (0.2, 0.005),
    beta: tuple[float, float] = (1.0, 2.0),
    *,
    effect_spread: float = 1.0,
    steps: int = 20_000,
    replicas: int = 32,
    sgd_lr: float = 0.02,
    adagrad_lr: float = 0.5,
    seed: int = 4,
) -> RareFeatureResult:
    r"""Train ``y ~ w . x`` on binary features active with probabilities ``p1 >> p2``, by SGD and AdaGrad.

    Each step sees one example: ``x_j = 1`` with probability ``p_j`` (independently), target
    ``y = sum_j x_j b_j`` with the example's effect ``b_j = beta_j (1 + s xi_j)``, ``xi_j ~ N(0, 1)``,
    and loss ``(x . w - y)^2 / 2``, whose gradient ``x_j (x . w - y)`` is zero unless feature j is active.
    ``replicas`` independent runs go side by side as the rows of one (replicas, 2) parameter.

    SGD's single rate must be small for the frequent feature's sake (at 0.02 its weight is about as
    noisy as AdaGrad's), so its rare weight, moved by 0.02 a hundred times in 20,000 examples, crawls;
    AdaGrad gives each feature a rate of its own.

    **The prediction.** AdaGrad's accumulator of feature j sums the squared gradients of the steps where
    it is active, ``G_j(t) = sum x_j r^2``. If the residual ``r`` of such a step has a mean square
    proportional to ``beta_j^2``, then ``G_j ~ p_j beta_j^2 t``, and the effective rates ``lr / sqrt(G_j)``
    stand in the ratio (frequent over rare)

        rate_1 / rate_2 = sqrt(G_2 / G_1) ~ |beta2| / |beta1| * sqrt(p2 / p1),

    i.e. the rare feature's rate is larger by the inverse, ``sqrt(p1 / p2)`` for equal weights: AdaGrad
    hands a rare feature the larger steps that its rare gradients need. The assumption holds at the
    start (``w = 0``: ``r = -b_j``, of mean square ``(1 + s^2) beta_j^2``) and, thanks to the spread
    ``s``, after a weight is learned too (``r`` is then the example's deviation ``s beta_j xi_j``).
    Without the spread (``s = 0``) a learned weight's gradient vanishes, its ``G`` stops growing and the
    ratio drifts far from the prediction (``noiseless_ratio``).

    **Tolerance.** The measured ratio is the replicas' mean after the last step; with the defaults
    (about 4,000 frequent and 100 rare activations per replica) it lies within
    ``RATE_RATIO_TOLERANCE`` = 10% of the prediction. It runs about 4% high: the co-active frequent
    feature's residual adds ``p1 beta1^2 / beta2^2`` = 5% to the rare feature's ``G`` (+2.5% on the
    ratio) and the learning transient the rest. One replica scatters by about 7% (the chi-square
    noise of ~100 squared residuals and the binomial noise of the count), the mean of 32 by about 1.3%.

    Parameters
    ----------
    p : (float, float), default (0.2, 0.005)
        Activation probabilities of the frequent and the rare feature.
    beta : (float, float), default (1.0, 2.0)
        Their true weights.
    effect_spread : float, default 1.0
        ``s``, the per-example relative spread of each effect.
    steps : int, default 20,000
        Examples per replica (one step each).
    replicas : int, default 32
        Independent runs.
    sgd_lr, adagrad_lr : float, default 0.02 and 0.5
        Rates. AdaGrad uses PyTorch's eps (1e-10, outside the root).
    seed : int, default 4
        Seed of the features and effects.

    Returns
    -------
    RareFeatureResult
    """
    rng = np.random.default_rng(seed)
    p_arr, beta_arr = np.array(p, dtype=np.float64), np.array(beta, dtype=np.float64)
    X = (rng.random((steps, replicas, 2)) < p_arr).astype(np.float64)
    xi = rng.standard_normal((steps, replicas, 2))
    y = (X * (beta_arr * (1.0 + effect_spread * xi))).sum(axis=2)
    del xi

    def rms_error(weights):
        return np.sqrt(((weights - beta_arr) ** 2).mean(axis=1))

    w = np.zeros((replicas, 2))
    sgd_err = rms_error(_train_linear(SGD(w, lr=sgd_lr), w, X, y, None))
    sums = np.empty((steps, replicas, 2))
    w = np.zeros((replicas, 2))
    opt = Adagrad(w, lr=adagrad_lr)
    ada_err = rms_error(_train_linear(opt, w, X, y, sums))
    ratio = _rate_ratio(opt, sums)
    w = np.zeros((replicas, 2))
    opt = Adagrad(w, lr=adagrad_lr)
    _train_linear(opt, w, X, X @ beta_arr, sums)
    noiseless = _rate_ratio(opt, sums).mean(axis=1)

    unseen = (np.cumsum(X, axis=0) == 0).any(axis=(1, 2))    # steps before every replica saw both
    summary = np.stack([ratio.mean(axis=1), *np.percentile(ratio, [10, 90], axis=1)], axis=1)
    summary[unseen] = np.nan
    noiseless[unseen] = np.nan
    return RareFeatureResult(
        p=tuple(p), beta=tuple(beta), effect_spread=effect_spread, steps=steps, replicas=replicas, seed=seed,
        counts=X.sum(axis=0).astype(np.int64), sgd_rms_error=sgd_err, adagrad_rms_error=ada_err,
        rate_ratio=summary, final_ratios=ratio[-1].copy(), noiseless_ratio=noiseless,
        prediction=float(abs(beta[1]) / abs(beta[0]) * np.sqrt(p[1] / p[0])),
        sgd_lr=sgd_lr, adagrad_lr=adagrad_lr,
    )


# --------------------------------------------------------------------------------------------------
# 5: the limits


@dataclass(frozen=True)
class RotatedResult:
    """Experiment 5a: the quadratic turned by 45 degrees, against the axis-aligned one.

    Attributes
    ----------
    hessian : ndarray, shape (2, 2)
        Hessian of the rotated quadratic ``f(x) = x^T H x / 2`` (eigenvalues 0.2 and 10, as before).
    aligned, rotated : dict of str to Path2D
        ``"sgd"`` and ``"adagrad"`` runs; the rotated runs start from the rotated x0, so both problems
        are the same up to the rotation.
    """

    hessian: np.ndarray
    aligned: dict[str, Path2D]
    rotated: dict[str, Path2D]


def rotated_quadratic(steps: int = 100, *, sgd_lr: float = 0.05, adagrad_lr: float = 0.5) -> RotatedResult:
    """SGD and AdaGrad on the quadratic and on the same quadratic rotated by 45 degrees.

    SGD is rotation-invariant: it ends at the same value (the rotated point) in both. AdaGrad rescales
    each *coordinate*; when the valley runs along a diagonal, both coordinates see the steep curvature,
    their accumulators grow alike, and the diagonal preconditioner cannot undo the rotation: AdaGrad
    behaves like SGD with a decaying scalar rate and ends far higher than on the aligned problem.

    Parameters
    ----------
    steps : int, default 100
    sgd_lr, adagrad_lr : float, default 0.05 and 0.5
        As experiment 1 (AdaGrad with the notebook's eps).

    Returns
    -------
    RotatedResult
    """
    c = np.sqrt(0.5)
    rotation = np.array([[c, -c], [c, c]])
    hessian = rotation @ np.diag(CURVATURE) @ rotation.T

    def value(x):
        return 0.5 * float(x @ hessian @ x)

    def runs(grad, x0, val):
        return {
            "sgd": _run_2d(lambda x: SGD(x, lr=sgd_lr), grad, x0, steps, val, f"SGD lr={sgd_lr:g}",
                           sgd_lr, track_rates=False),
            "adagrad": _run_2d(lambda x: Adagrad(x, lr=adagrad_lr, **NOTEBOOK_ADAGRAD), grad, x0, steps, val,
                               f"AdaGrad lr={adagrad_lr:g}", adagrad_lr, track_rates=True),
        }

    return RotatedResult(
        hessian=hessian,
        aligned=runs(quadratic_grad, X0, quadratic_value),
        rotated=runs(lambda x: hessian @ x, rotation @ np.array(X0), value),
    )


@dataclass(frozen=True)
class NonstationaryResult:
    """Experiment 5b: a steep first phase, then a target that moves.

    Attributes
    ----------
    switch : int
        Steps of the first phase.
    targets, curvatures : (float, float)
        Target and curvature of each phase.
    errors : dict of str to ndarray, shape (steps,)
        ``|x - target|`` after every step, for ``"carried"`` (one AdaGrad throughout) and
        ``"restarted"`` (a fresh AdaGrad, ``G = 0``, at the switch).
    rates : dict of str to ndarray, shape (steps,)
        The effective rate after every step.
    lr : float
    """

    switch: int
    targets: tuple[float, float]
    curvatures: tuple[float, float]
    errors: dict[str, np.ndarray]
    rates: dict[str, np.ndarray]
    lr: float

    @property
    def final_errors(self) -> dict[str, float]:
        """``|x - target|`` after the last step."""
        return {k: float(v[-1]) for k, v in self.errors.items()}

    @property
    def errors_at_switch(self) -> dict[str, float]:
        """``|x - new target|`` right after the switch (before any second-phase step)."""
        return {k: float(v[self.switch - 1]) for k, v in self.errors.items()}


def nonstationary(
    switch: int = 100,
    steps: int = 400,
    *,
    targets: tuple[float, float] = (10.0, 0.0),
    curvatures: tuple[float, float] = (10.0, 1.0),
    lr: float = 0.5,
) -> NonstationaryResult:
    """AdaGrad on ``f(x) = h (x - a)^2 / 2`` whose ``h`` and ``a`` change after ``switch`` steps.

    From x = 0, the first phase (h = 10, a = 10) has gradients up to 100; they fill ``G``. Then the
    target moves to 0 on a flat bowl (h = 1): gradients of a few units, divided by the root of the first
    phase's huge sum. The rate never recovers (``G`` only grows), so the carried optimizer barely moves,
    while one restarted at the switch converges. RMSProp's fix is to let ``G`` forget: an exponential
    moving average of ``g^2`` instead of the sum.

    Parameters
    ----------
    switch : int, default 100
        Steps of the first phase.
    steps : int, default 400
        Steps in all.
    targets, curvatures : (float, float)
        ``a`` and ``h`` of the two phases.
    lr : float, default 0.5
        AdaGrad's rate (the notebook's eps).

    Returns
    -------
    NonstationaryResult
    """
    errors, rates = {}, {}
    for mode in ("carried", "restarted"):
        x = np.zeros(1)
        opt = Adagrad(x, lr=lr, **NOTEBOOK_ADAGRAD)
        err, rate = np.empty(steps), np.empty(steps)
        for t in range(steps):
            phase = 0 if t < switch else 1
            if t == switch and mode == "restarted":
                opt = Adagrad(x, lr=lr, **NOTEBOOK_ADAGRAD)
            opt.step(np.array([curvatures[phase] * (x[0] - targets[phase])]))
            # error against the target of the phase that follows this step (the new one at the switch)
            err[t] = abs(x[0] - targets[0 if t + 1 < switch else 1])
            rate[t] = effective_rates(opt)[0]
        errors[mode], rates[mode] = err, rate
    return NonstationaryResult(switch, tuple(targets), tuple(curvatures), errors, rates, lr)


# --------------------------------------------------------------------------------------------------
# All of it: numbers, text, figures


@dataclass(frozen=True)
class DemoResults:
    """The numbers of every experiment."""

    quadratic: QuadraticResult
    lesson: LessonTable
    sparse: SparseResult
    rare: RareFeatureResult
    rotated: RotatedResult
    nonstationary: NonstationaryResult


def run_experiments() -> DemoResults:
    """Run the five experiments with their defaults (about a second)."""
    return DemoResults(
        quadratic=quadratic_paths(),
        lesson=lesson_table(),
        sparse=sparse_gradients(),
        rare=rare_features(),
        rotated=rotated_quadratic(),
        nonstationary=nonstationary(),
    )


def _point(x: np.ndarray) -> str:
    return f"({x[0]:+.4f}, {x[1]:+.4g})"


def report(results: DemoResults) -> str:
    """The demo's text report: what each experiment measured.

    Parameters
    ----------
    results : DemoResults

    Returns
    -------
    str
        Lines of text, without a final newline.
    """
    return "\n\n".join([
        _report_quadratic(results.quadratic),
        _report_accumulator(results.quadratic, results.lesson),
        _report_sparse(results.sparse),
        _report_rare(results.rare),
        _report_limits(results.rotated, results.nonstationary),
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


def _report_accumulator(q: QuadraticResult, les: LessonTable) -> str:
    rates = q.adagrad.rates
    lines = [
        "2. The accumulator: AdaGrad's effective rate lr/sqrt(G + eps) per coordinate, same run:",
        f"   after step 1: x1 {rates[0, 0]:.4g}, x2 {rates[0, 1]:.4g};  after step {q.steps}: "
        f"x1 {rates[-1, 0]:.4g}, x2 {rates[-1, 1]:.4g} (steep x2: smaller)",
        f"   The lesson's table, by cadagrad (alpha = {les.lr:g}, eps = {les.eps:g} outside the root):",
        "   step    g        G    sqrt(G)   alpha/sqrt(G)   step size",
    ]
    for i in range(len(les.grads)):
        lines.append(f"   {i + 1:>4} {les.grads[i]:>4g} {les.accumulators[i]:>8g} {les.roots[i]:>10.4f}"
                     f" {les.rates[i]:>15.5f} {les.step_sizes[i]:>11.5f}")
    lines.append("   (the lesson prints 0.01, 0.0075, 0.0057, ..., 0.0045: it rounds sqrt(G) before "
                 "dividing)")
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


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_demo(out_dir: str | os.PathLike | None = None, *, plots: bool = True) -> str:
    """Run every experiment; write the figures if asked and possible; return the report.

    Parameters
    ----------
    out_dir : path, default ``./cadagrad-demo``
        Where the PNG figures go (created if missing).
    plots : bool, default True
        Write figures (needs matplotlib).

    Returns
    -------
    str
        The report, ending with where the figures are or how to get them.
    """
    results = run_experiments()
    text = report(results)
    out = Path(DEFAULT_OUT if out_dir is None else out_dir)
    if not plots:
        note = "Figures skipped (--no-plots)."
    elif not plots_available():
        note = ("No figures: matplotlib is not installed. Install it with  pip install 'cadagrad[demo]'  "
                "(or  pip install matplotlib), then run  python -m cadagrad demo  again.")
    else:
        paths = plot_all(results, out)
        note = f"Figures ({len(paths)}) written to {out}/: " + ", ".join(p.name for p in paths)
    return f"{text}\n\n{note}"


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib imported here only)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _contour(ax, value_on_grid, xlim, ylim) -> None:
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


def _draw_path(ax, run: Path2D, color: str, **kwargs) -> None:
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


def plot_accumulator(quadratic: QuadraticResult, lesson: LessonTable, path: str | os.PathLike) -> Path:
    """Figure 2: AdaGrad's per-coordinate effective rate over the run, and the lesson's table.

    Parameters
    ----------
    quadratic : QuadraticResult
    lesson : LessonTable
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
    cells = [[f"{i + 1}", f"{lesson.grads[i]:g}", f"{lesson.accumulators[i]:g}", f"{lesson.roots[i]:.3f}",
              f"{lesson.rates[i]:.5f}", f"{lesson.step_sizes[i]:.5f}"] for i in range(len(lesson.grads))]
    table = tab.table(cellText=cells, colLabels=["step", "g", "G", "√G", "α/√G", "step size"],
                      loc="center", cellLoc="right")
    table.scale(1, 1.6)
    tab.set_title(f"The lesson: α = {lesson.lr:g}, ε = {lesson.eps:g} outside the root, by cadagrad")
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


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: DemoResults, out_dir: str | os.PathLike) -> list[Path]:
    """Write the five figures (``FIGURE_NAMES``) into ``out_dir``, creating it if needed.

    Parameters
    ----------
    results : DemoResults
    out_dir : path

    Returns
    -------
    list of Path
        The files written, in order.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = iter(FIGURE_NAMES)
    return [
        plot_quadratic(results.quadratic, out / next(names)),
        plot_accumulator(results.quadratic, results.lesson, out / next(names)),
        plot_sparse(results.sparse, out / next(names)),
        plot_rare_features(results.rare, out / next(names)),
        plot_limits(results.rotated, results.nonstationary, out / next(names)),
    ]
