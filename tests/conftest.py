"""Shared strategies and helpers; prints how the package was built at the top of every test run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import cadagrad

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile("ci")


def pytest_report_header(config):
    return f"cadagrad build_info: {cadagrad.build_info()}"


# Tests that need many GiB of memory are marked ``bigmem`` and skipped, with the reason, unless --bigmem is
# given: the default run then stays within a few hundred MiB. ``python -m pytest --bigmem -m bigmem`` runs
# only them (CI does, on a machine with the memory).
BIGMEM_HOW = "run with --bigmem (python -m pytest --bigmem -m bigmem: these only)"


def pytest_addoption(parser):
    parser.addoption(
        "--bigmem", action="store_true", default=False,
        help="also run the tests marked bigmem, which need many GiB of memory (skipped by default)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bigmem(reason=...): needs many GiB of memory; skipped unless pytest is run with --bigmem"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bigmem"):
        return
    for item in items:
        marker = item.get_closest_marker("bigmem")
        if marker is not None:
            why = marker.kwargs.get("reason", "needs many GiB of memory")
            item.add_marker(pytest.mark.skip(reason=f"bigmem: {why}; {BIGMEM_HOW}"))


DTYPES = (np.float32, np.float64)

dtypes = st.sampled_from(DTYPES)
shapes = st.lists(st.integers(1, 9), min_size=0, max_size=3).map(tuple) | st.integers(1, 3000).map(
    lambda n: (n,)
)
seeds = st.integers(0, 2**32 - 1)
small_positive = st.floats(1e-4, 1.0) | st.just(0.0)


def adagrad_options() -> st.SearchStrategy[dict]:
    """Every AdaGrad option, with zero and non-zero values."""
    return st.fixed_dictionaries(
        {
            "lr": st.floats(1e-4, 1.0),
            "lr_decay": small_positive,
            "weight_decay": small_positive,
            "initial_accumulator_value": small_positive,
            "eps": st.sampled_from([1e-10, 1e-8, 1e-7, 1e-3]),
            "eps_inside_sqrt": st.booleans(),
            "maximize": st.booleans(),
        }
    )


def sgd_options() -> st.SearchStrategy[dict]:
    """Every SGD option; Nesterov only where PyTorch allows it (momentum > 0, no dampening)."""
    base = st.fixed_dictionaries(
        {
            "lr": st.floats(1e-4, 1.0),
            "momentum": small_positive,
            "dampening": st.sampled_from([0.0, 0.1, 0.5]),
            "weight_decay": small_positive,
            "maximize": st.booleans(),
        }
    )
    nesterov = st.fixed_dictionaries(
        {
            "lr": st.floats(1e-4, 1.0),
            "momentum": st.floats(0.01, 0.99),
            "dampening": st.just(0.0),
            "nesterov": st.just(True),
            "weight_decay": small_positive,
            "maximize": st.booleans(),
        }
    )
    return base | nesterov


def random_array(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """Normal values scaled over several orders of magnitude (never all zeros)."""
    scale = 10.0 ** rng.uniform(-3, 2)
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same dtype, shape and bytes (so NaNs and signed zeros count too)."""
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    if actual.tobytes() != expected.tobytes():
        bad = np.flatnonzero(actual.ravel().view(np.uint8) != expected.ravel().view(np.uint8))
        i = bad[0] // actual.itemsize
        raise AssertionError(
            f"{what}: {len(bad)} bytes differ; first at element {i}: "
            f"{actual.ravel()[i]!r} != {expected.ravel()[i]!r}"
        )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)
