"""The demo's experiments: AdaGrad against SGD on small problems, as numbers.

Each experiment is a function that runs cadagrad's compiled optimizers (float64) and returns its numbers
in a small frozen dataclass. Nothing here prints, formats or plots: :mod:`cadagrad.demo.report` turns the
numbers into text and :mod:`cadagrad.demo.figures` into PNG figures.

1. :func:`quadratic_paths`: the ill-conditioned quadratic ``f(x) = 0.1 x1^2 + 5 x2^2`` from (9, -3),
   SGD against AdaGrad (eps inside the root).
2. :func:`accumulator_table`: the accumulator at work on one parameter fed the gradients 10, 9, 11, 10,
   10; the per-coordinate effective rates of experiment 1 come with :func:`quadratic_paths`.
3. :func:`sparse_gradients`: the same quadratic with the x2 gradient zeroed with probability p.
4. :func:`rare_features`: a linear model on a frequent and a rare binary feature.
5. :func:`rotated_quadratic` and :func:`nonstationary`: where AdaGrad's diagonal, ever-growing
   accumulator fails.
6. :func:`~cadagrad.demo.sparsity.l1_sparsity` (in :mod:`cadagrad.demo.sparsity`): l1-regularized
   logistic regression on sparse features, AdaGrad against ProximalAdagrad and AdagradDA.

AdaGrad's effective rate ``lr / d`` (:func:`effective_rates`) takes its divisor ``d`` from
:func:`cadagrad.reference.adagrad_denominator`, the reference's own statement of the rule, so the
demo holds no copy of the formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..optim import SGD, Adagrad
from ..reference import adagrad_denominator
from .sparsity import SparsityResult, l1_sparsity

#: AdaGrad as it is most often written, ``G += g*g; x -= lr * g / sqrt(G + 1e-8)``: eps inside the
#: root (Keras' and optax's placement; PyTorch adds eps after the root).
EPS_INSIDE_ADAGRAD = {"eps": 1e-8, "eps_inside_sqrt": True}
#: Curvatures of ``f(x) = 0.1 x1^2 + 5 x2^2``: its gradient is ``(0.2 x1, 10 x2)``.
CURVATURE = np.array([0.2, 10.0])
X0 = (9.0, -3.0)
#: Relative tolerance of the rare-feature rate ratio against its prediction (see :func:`rare_features`).
RATE_RATIO_TOLERANCE = 0.10


def quadratic_value(x: np.ndarray) -> np.ndarray | float:
    """``f(x) = 0.1 x1^2 + 5 x2^2`` (for arrays of shape (..., 2), elementwise over the leading axes).

    Parameters
    ----------
    x : array_like, shape (..., 2)
        One point or a grid of points.

    Returns
    -------
    ndarray or float
        ``f`` at each point.
    """
    x = np.asarray(x)
    return 0.1 * x[..., 0] ** 2 + 5.0 * x[..., 1] ** 2


def quadratic_grad(x: np.ndarray) -> np.ndarray:
    """Gradient ``(0.2 x1, 10 x2)`` of :func:`quadratic_value`, computed as ``CURVATURE * x``.

    Parameters
    ----------
    x : ndarray, shape (2,)

    Returns
    -------
    ndarray, shape (2,)
    """
    return CURVATURE * x


def effective_rates(opt: Adagrad) -> np.ndarray:
    """AdaGrad's per-element effective learning rate ``lr / d`` now, for the optimizer's first param.

    ``d`` is :func:`cadagrad.reference.adagrad_denominator` of the optimizer's own accumulator
    (``opt.sums``): ``sqrt(G) + eps``, or ``sqrt(G + eps)`` with ``eps_inside_sqrt``. ``G`` already
    holds the last gradient, so the step just taken moved each element by this rate times its
    gradient. With ``lr_decay`` the rate of step ``t`` is smaller; the demo uses none.

    Parameters
    ----------
    opt : cadagrad.Adagrad
        The optimizer (``rowwise=False``).

    Returns
    -------
    ndarray
        A new array of the first param's shape.
    """
    return _rates(opt.sums[0], opt)


def _rates(sums: np.ndarray, opt: Adagrad) -> np.ndarray:
    """``lr / d`` for accumulator values ``sums`` (any shape) under ``opt``'s hyperparameters."""
    return opt.lr / adagrad_denominator(sums, opt.eps, opt.eps_inside_sqrt)


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
        The main runs: SGD lr=0.05, AdaGrad lr=0.5 (eps = 1e-8 inside the root).
    sgd_zigzag : Path2D or None
        SGD at a rate above 1/10 (the steep axis' curvature), where it zig-zags across that axis.
    steps : int
        Steps taken by each.
    """

    sgd: Path2D
    adagrad: Path2D
    sgd_zigzag: Path2D | None
    steps: int


def _run_2d(
    opt_factory: Callable[[np.ndarray], SGD | Adagrad],
    grad: Callable[[np.ndarray], np.ndarray],
    x0: tuple[float, float] | np.ndarray,
    steps: int,
    value: Callable[[np.ndarray], float],
    label: str,
    lr: float,
    track_rates: bool,
) -> Path2D:
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
        The two rates; AdaGrad's is ten times SGD's, as it divides by the gradients' root sum.
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

    adagrad = _run_2d(lambda x: Adagrad(x, lr=adagrad_lr, **EPS_INSIDE_ADAGRAD), quadratic_grad, X0, steps,
                      quadratic_value, f"AdaGrad lr={adagrad_lr:g}", adagrad_lr, track_rates=True)
    return QuadraticResult(
        sgd=run_sgd(sgd_lr),
        adagrad=adagrad,
        sgd_zigzag=None if zigzag_lr is None else run_sgd(zigzag_lr),
        steps=steps,
    )


@dataclass(frozen=True)
class AccumulatorTable:
    """Experiment 2: the accumulator of one parameter, one row per step, every number from cadagrad.

    Attributes
    ----------
    lr, eps : float
        alpha = 0.1 and eps = 1e-8 (outside the root, as PyTorch).
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


def accumulator_table(grads: tuple[float, ...] = (10.0, 9.0, 11.0, 10.0, 10.0), lr: float = 0.1,
                      eps: float = 1e-8) -> AccumulatorTable:
    """AdaGrad's accumulator step by step: one parameter fed the gradients 10, 9, 11, 10, 10, alpha = 0.1.

    This is the usual worked example of the rule. Worked by hand, with ``sqrt(G)`` rounded before
    dividing (0.1 / 13.4 = 0.0075 where 0.1 / 13.454 = 0.00743), the effective rates come out as 0.01,
    0.0075, 0.0057, ..., 0.0045: these agree with cadagrad's to one unit of that last digit.

    Parameters
    ----------
    grads : tuple of float
        The gradient of each step.
    lr, eps : float
        alpha and eps (outside the root).

    Returns
    -------
    AccumulatorTable
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
    return AccumulatorTable(lr, eps, np.array(grads, dtype=np.float64), G, root, rate, size)


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
    """Experiment 3: AdaGrad (lr = 0.5, eps inside the root) with the x2 gradient dropped at random.

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
        AdaGrad's rate (eps = 1e-8 inside the root, ``EPS_INSIDE_ADAGRAD``).
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
        opt = Adagrad(x, lr=lr, **EPS_INSIDE_ADAGRAD)
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


def _train_linear(
    opt: SGD | Adagrad, w: np.ndarray, X: np.ndarray, y: np.ndarray, sums: np.ndarray | None
) -> np.ndarray:
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
    rates = _rates(sums, opt)
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
        As experiment 1 (AdaGrad with eps inside the root).

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
            "adagrad": _run_2d(lambda x: Adagrad(x, lr=adagrad_lr, **EPS_INSIDE_ADAGRAD), grad, x0, steps,
                               val, f"AdaGrad lr={adagrad_lr:g}", adagrad_lr, track_rates=True),
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
        AdaGrad's rate (eps inside the root).

    Returns
    -------
    NonstationaryResult
    """
    errors, rates = {}, {}
    for mode in ("carried", "restarted"):
        x = np.zeros(1)
        opt = Adagrad(x, lr=lr, **EPS_INSIDE_ADAGRAD)
        err, rate = np.empty(steps), np.empty(steps)
        for t in range(steps):
            phase = 0 if t < switch else 1
            if t == switch and mode == "restarted":
                opt = Adagrad(x, lr=lr, **EPS_INSIDE_ADAGRAD)
            opt.step(np.array([curvatures[phase] * (x[0] - targets[phase])]))
            # error against the target of the phase that follows this step (the new one at the switch)
            err[t] = abs(x[0] - targets[0 if t + 1 < switch else 1])
            rate[t] = effective_rates(opt)[0]
        errors[mode], rates[mode] = err, rate
    return NonstationaryResult(switch, tuple(targets), tuple(curvatures), errors, rates, lr)


# --------------------------------------------------------------------------------------------------
# All of them


@dataclass(frozen=True)
class DemoResults:
    """The numbers of every experiment."""

    quadratic: QuadraticResult
    table: AccumulatorTable
    sparse: SparseResult
    rare: RareFeatureResult
    rotated: RotatedResult
    nonstationary: NonstationaryResult
    sparsity: SparsityResult


def run_experiments() -> DemoResults:
    """Run the six experiments with their defaults (about two seconds)."""
    return DemoResults(
        quadratic=quadratic_paths(),
        table=accumulator_table(),
        sparse=sparse_gradients(),
        rare=rare_features(),
        rotated=rotated_quadratic(),
        nonstationary=nonstationary(),
        sparsity=l1_sparsity(),
    )
