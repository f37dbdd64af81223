"""The demo's sixth experiment: l1-regularized logistic regression on sparse features, as numbers.

Binary features, most of them noise, a few rare ones informative, and a planted weight vector; the
same minibatches train :class:`cadagrad.Adagrad`, :class:`cadagrad.ProximalAdagrad` and
:class:`cadagrad.AdagradDA` at several l1 penalties. What is measured: the final log-loss (train and
held-out) against the fraction of weights that are exactly zero.

All three minimize the same objective, the minibatch's mean log-loss plus ``l1 * ||w||_1``. Proximal
AdaGrad and AdaGrad dual averaging handle the penalty in their rule (Duchi, Hazan & Singer 2011,
"Adaptive Subgradient Methods for Online Learning and Stochastic Optimization", JMLR 12, section 3),
which is what yields exact zeros. AdaGrad can only be handed its subgradient ``l1 * sign(w)`` with the
loss's gradient: the textbook way, and one that never lands a weight on zero.

Nothing here prints, formats or plots (:mod:`cadagrad.demo.report`, :mod:`cadagrad.demo.figures`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..optim import Adagrad
from ..proximal import AdagradDA, ProximalAdagrad

#: The optimizers of experiment 6, in the report's order.
SPARSITY_OPTIMIZERS = ("Adagrad", "ProximalAdagrad", "AdagradDA")


@dataclass(frozen=True)
class SparsityRun:
    """One optimizer at one l1 penalty, after the last step.

    Attributes
    ----------
    optimizer : str
        One of ``SPARSITY_OPTIMIZERS``.
    l1 : float
    rows : bool
        True for row steps (``step_rows`` on the batch's active features only), False for dense steps.
    zero_fraction : float
        Fraction of the weights that are exactly 0 (+0.0 or -0.0).
    train_loss, test_loss : float
        Mean log-loss on the training and the held-out examples (without the penalty).
    informative_kept : int
        How many of the informative features have a nonzero weight.
    """

    optimizer: str
    l1: float
    rows: bool
    zero_fraction: float
    train_loss: float
    test_loss: float
    informative_kept: int


@dataclass(frozen=True)
class SparsityResult:
    """Experiment 6: l1-regularized logistic regression on sparse binary features.

    Attributes
    ----------
    features, informative, train_size, test_size, batch, epochs, seed : int
    p_range : (float, float)
        Activation probabilities of the features, log-uniform in this range.
    informative_p : (float, float)
        The range the informative features' probabilities come from (the rarest features).
    weight : float
        The informative features' planted weights are ``+weight`` or ``-weight``.
    lr : float
        Every optimizer's learning rate; the accumulators start at 0.1.
    l1s : tuple of float
        The penalties, increasing, the first 0.
    runs : tuple of SparsityRun
        Dense steps: every optimizer at every l1 (optimizer-major).
    row_runs : tuple of SparsityRun
        ProximalAdagrad and AdagradDA again, by ``step_rows`` on the batch's active features.
    active_per_example : float
        Mean number of active features per example.
    planted_test_loss : float
        The held-out loss of the planted weights (the best any model can expect).
    """

    features: int
    informative: int
    train_size: int
    test_size: int
    batch: int
    epochs: int
    seed: int
    p_range: tuple[float, float]
    informative_p: tuple[float, float]
    weight: float
    lr: float
    l1s: tuple[float, ...]
    runs: tuple[SparsityRun, ...]
    row_runs: tuple[SparsityRun, ...]
    active_per_example: float
    planted_test_loss: float

    @property
    def steps(self) -> int:
        """Optimizer steps per run."""
        return self.epochs * (self.train_size // self.batch)

    def curve(self, optimizer: str, *, rows: bool = False) -> tuple[SparsityRun, ...]:
        """One optimizer's runs, in the order of ``l1s``."""
        return tuple(r for r in (self.row_runs if rows else self.runs) if r.optimizer == optimizer)


@dataclass(frozen=True)
class _Examples:
    """Binary examples as CSR: example i's active features are ``cols[starts[i]:starts[i + 1]]``."""

    cols: np.ndarray
    starts: np.ndarray
    y: np.ndarray

    def batch(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Active features, their example (0-based within the batch) and the labels of examples [lo, hi)."""
        a, b = self.starts[lo], self.starts[hi]
        owner = np.repeat(np.arange(hi - lo), np.diff(self.starts[lo:hi + 1]))
        return self.cols[a:b], owner, self.y[lo:hi]


def _draw(rng: np.random.Generator, n: int, p: np.ndarray, w: np.ndarray, chunk: int = 500) -> _Examples:
    # In chunks of examples, to keep the uniform draws small (the same stream as one (n, d) draw).
    found = [np.nonzero(rng.random((min(chunk, n - lo), p.size)) < p) for lo in range(0, n, chunk)]
    rows = np.concatenate([r + lo for (r, _), lo in zip(found, range(0, n, chunk))])
    cols = np.concatenate([c for _, c in found])
    starts = np.searchsorted(rows, np.arange(n + 1))
    z = np.bincount(rows, weights=w[cols], minlength=n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    return _Examples(cols, starts, y)


def _log_loss(data: _Examples, w: np.ndarray) -> float:
    n = data.y.size
    owner = np.repeat(np.arange(n), np.diff(data.starts))
    z = np.bincount(owner, weights=w[data.cols], minlength=n)
    # -log sigmoid(z) if y = 1, -log sigmoid(-z) if y = 0; logaddexp(0, x) = log(1 + e^x) without overflow
    return float(np.mean(np.logaddexp(0.0, np.where(data.y > 0, -z, z))))


def _train(name: str, l1: float, rows: bool, data: _Examples, features: int, batch: int, epochs: int,
           lr: float) -> np.ndarray:
    """Train one model from w = 0; returns its weights."""
    table = np.zeros((features, 1))            # one row per feature, so that step_rows can name them
    w = table[:, 0]
    if name == "Adagrad":
        opt = Adagrad(table, lr=lr, initial_accumulator_value=0.1)
    else:
        opt = (ProximalAdagrad if name == "ProximalAdagrad" else AdagradDA)(table, lr, l1=l1)
    n = data.y.size
    for _ in range(epochs):
        for lo in range(0, n - batch + 1, batch):
            cols, owner, y = data.batch(lo, lo + batch)
            z = np.bincount(owner, weights=w[cols], minlength=batch)
            r = (1.0 / (1.0 + np.exp(-z)) - y) / batch        # d(mean log-loss)/dz per example
            if rows:
                opt.step_rows(cols, r[owner][:, None])        # duplicates summed by step_rows
                continue
            g = np.bincount(cols, weights=r[owner], minlength=features)
            if name == "Adagrad" and l1 > 0:
                g += l1 * np.sign(w)                          # the penalty's subgradient
            opt.step(g[:, None])
    return w


def l1_sparsity(
    l1s: tuple[float, ...] = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    *,
    features: int = 2000,
    informative: int = 60,
    p_range: tuple[float, float] = (0.003, 0.03),
    informative_p: tuple[float, float] = (0.01, 0.02),
    weight: float = 3.0,
    train_size: int = 4000,
    test_size: int = 4000,
    batch: int = 20,
    epochs: int = 3,
    lr: float = 0.2,
    seed: int = 6,
) -> SparsityResult:
    """Train the three optimizers at every l1 on one synthetic sparse problem; measure loss and zeros.

    Feature ``j`` is active (1) with probability ``p_j``, log-uniform in ``p_range`` and independent
    across features and examples; ``informative`` features drawn among those with ``p_j`` in
    ``informative_p`` get the planted weight ``+weight`` or ``-weight``, every other one 0. The label is
    1 with probability ``sigmoid(x . w*)``. Every run starts from ``w = 0`` and takes the same minibatch
    steps on the mean log-loss (``epochs`` passes in a fixed order, no bias term), in float64.

    Dense steps (``step``) apply each rule to every weight at every step. Row steps (``step_rows`` with
    the batch's active features, duplicates included) touch a feature only when it is active, so its
    penalty acts only then: that is another, lazier optimizer, reported apart (``row_runs``).

    Parameters
    ----------
    l1s : tuple of float
        The penalties, increasing, starting at 0.
    features, informative : int, default 2000 and 60
    p_range : (float, float), default (0.003, 0.03)
        Every feature is rare: active in 0.3% to 3% of the examples.
    informative_p : (float, float), default (0.01, 0.02)
    weight : float, default 3.0
    train_size, test_size : int, default 4000 each
    batch, epochs : int, default 20 and 3
    lr : float, default 0.2
        Every optimizer's rate; accumulators start at 0.1 (AdaGrad's too, so that only the penalty's
        handling differs).
    seed : int, default 6

    Returns
    -------
    SparsityResult
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.log(p_range[0]), np.log(p_range[1])
    p = np.exp(rng.uniform(lo, hi, features))
    candidates = np.flatnonzero((p >= informative_p[0]) & (p <= informative_p[1]))
    chosen = rng.choice(candidates, informative, replace=False)
    planted = np.zeros(features)
    planted[chosen] = weight * rng.choice([-1.0, 1.0], informative)
    train = _draw(rng, train_size, p, planted)
    test = _draw(rng, test_size, p, planted)

    def run(name: str, l1: float, rows: bool) -> SparsityRun:
        w = _train(name, l1, rows, train, features, batch, epochs, lr)
        return SparsityRun(name, l1, rows, float(np.mean(w == 0.0)), _log_loss(train, w), _log_loss(test, w),
                           int(np.count_nonzero(w[chosen])))

    runs = tuple(run(name, l1, False) for name in SPARSITY_OPTIMIZERS for l1 in l1s)
    row_runs = tuple(run(name, l1, True) for name in SPARSITY_OPTIMIZERS[1:] for l1 in l1s)
    return SparsityResult(
        features=features, informative=informative, train_size=train_size, test_size=test_size,
        batch=batch, epochs=epochs, seed=seed, p_range=tuple(p_range), informative_p=tuple(informative_p),
        weight=weight, lr=lr, l1s=tuple(l1s), runs=runs, row_runs=row_runs,
        active_per_example=float(train.cols.size / train_size), planted_test_loss=_log_loss(test, planted),
    )
