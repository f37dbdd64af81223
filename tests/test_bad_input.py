"""Bad input is refused with a clear error, and refused before anything is written.

Every bad call below must raise TypeError or ValueError (AttributeError for a fixed option) whose message
starts with the name of the offending argument (``grads[2]: ...``, ``lr: ...``,
``state_dict['step']: ...``), and must leave every buffer involved byte-identical: the params (and the
spare element beyond each of them), the grads, the optimizer's own state (``sums``,
``momentum_buffers``), caller-owned sums and momentum buffers, ``step_count`` and the hyperparameters.
``assert_untouched`` checks all of that in one place.

Groups, in order: the optimizers' params at construction; a step's grads (including one bad grad among
three, to show validate-all-before-update); params changed after construction; memory shared between
params, grads and state; hyperparameters at construction and as attributes; ``load_state_dict``; the
functional layer; sparse ``step_rows`` (and the step engine's own check of momentum buffers, below the
validators, whose message names no argument); and finally the edge cases that are well defined and must work.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import pytest
from conftest import random_array

import cadagrad
from cadagrad import _kernels, reference

SHAPES = ((4, 3), (5,), (2, 3, 2))
DTYPES = (np.float32, np.float64, np.float32)


# ---------------------------------------------------------------------------------------------------
# Helpers


def state_arrays(opt) -> list[np.ndarray]:
    """The optimizer's own state buffers (accumulators or momentum buffers), possibly none."""
    if opt is None:
        return []
    if isinstance(opt, cadagrad.Adagrad):
        return opt.sums
    if isinstance(opt, cadagrad.AdagradDA):
        return opt.sums + opt.grad_sums
    if isinstance(opt, cadagrad.ProximalAdagrad):
        return opt.sums
    return opt.momentum_buffers or []


def fingerprint(opt) -> dict:
    """Everything observable about an optimizer: bytes of params and state, step count, options."""
    return {
        "params": [p.tobytes() for p in opt.params],
        "state": [(s.shape, s.dtype, s.tobytes()) for s in state_arrays(opt)],
        "step_count": opt.step_count,
        "hyperparameters": opt.state_dict()["hyperparameters"],
        "num_threads": opt.num_threads,
    }


def assert_untouched(arrays, fn, exc, match, optimizers=()):
    """``fn()`` raises ``exc`` matching ``match``; every array and optimizer is exactly as before."""
    arrays = [a for a in arrays if isinstance(a, np.ndarray)]
    before = [a.tobytes() for a in arrays]
    prints = [fingerprint(opt) for opt in optimizers]
    with pytest.raises(exc, match=match):
        fn()
    for i, (array, old) in enumerate(zip(arrays, before)):
        assert array.tobytes() == old, f"buffer {i} (shape {array.shape}, {array.dtype}) was written"
    for opt, old in zip(optimizers, prints):
        assert fingerprint(opt) == old, f"{type(opt).__name__} changed"


def assert_same_as_twin(opt, twin, grads) -> None:
    """Stepping ``opt`` and ``twin`` with the same grads gives the same bits."""
    opt.step([g.copy() for g in grads])
    twin.step([g.copy() for g in grads])
    assert fingerprint(opt) == fingerprint(twin)


def with_item(items, i, value) -> list:
    items = list(items)
    items[i] = value
    return items


def unaligned(a: np.ndarray) -> np.ndarray:
    """A writable copy of ``a`` starting one byte into an allocation, so not aligned."""
    raw = np.empty(a.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def strided(a: np.ndarray) -> np.ndarray:
    """A non-contiguous view with ``a``'s shape and values (every other element of a wider array)."""
    wide = np.stack([a, a], axis=-1)
    return wide[..., 0]


def transposed(a: np.ndarray) -> np.ndarray:
    """An F-ordered view with ``a``'s shape (the transpose of a contiguous transpose)."""
    return np.ascontiguousarray(a.T).T


def empty_view_at(buf: np.ndarray, element: int) -> np.ndarray:
    """A (0,) view of ``buf`` whose byte bounds lie ``element`` elements into it."""
    return np.ndarray((0,), buf.dtype, buffer=buf, offset=element * buf.itemsize)


@dataclass
class Setup:
    """Three params of SHAPES/DTYPES, each the head of a base with one spare element, and their grads."""

    bases: list[np.ndarray]
    params: list[np.ndarray]
    grads: list[np.ndarray]
    opt: object = None
    extra: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> list[np.ndarray]:
        """Every buffer a bad call could touch."""
        return [*self.bases, *self.grads, *state_arrays(self.opt), *self.extra]

    def shifted(self, i: int) -> np.ndarray:
        """A view of params[i]'s buffer one element further on: overlaps params[i] partly."""
        return self.bases[i][1:].reshape(self.params[i].shape)


def make_setup(rng) -> Setup:
    bases = [random_array(rng, (int(np.prod(s)) + 1,), d) for s, d in zip(SHAPES, DTYPES)]
    params = [b[:-1].reshape(s) for b, s in zip(bases, SHAPES)]
    grads = [random_array(rng, s, d) for s, d in zip(SHAPES, DTYPES)]
    return Setup(bases, params, grads)


def random_grads(rng, params) -> list[np.ndarray]:
    return [random_array(rng, p.shape, p.dtype) for p in params]


OPTIMIZERS = {
    "adagrad": lambda ps: cadagrad.Adagrad(
        ps, lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1
    ),
    "sgd": lambda ps: cadagrad.SGD(ps, lr=0.1, weight_decay=0.01),
    "sgd_momentum": lambda ps: cadagrad.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    "proximal_adagrad": lambda ps: cadagrad.ProximalAdagrad(ps, lr=0.1, l1=0.01, l2=0.01),
    "adagrad_da": lambda ps: cadagrad.AdagradDA(ps, lr=0.1, l1=0.01, l2=0.01),
}
STATEFUL = ("adagrad", "sgd_momentum", "proximal_adagrad", "adagrad_da")


def make_optimizer_setup(rng, kind: str) -> Setup:
    """An optimizer over a fresh Setup, warmed up by one step so its state holds random data."""
    s = make_setup(rng)
    s.opt = OPTIMIZERS[kind](s.params)
    s.opt.step(random_grads(rng, s.params))
    return s


@pytest.fixture(params=list(OPTIMIZERS))
def setup(request, rng) -> Setup:
    return make_optimizer_setup(rng, request.param)


@pytest.fixture(params=STATEFUL)
def stateful_setup(request, rng) -> Setup:
    return make_optimizer_setup(rng, request.param)


# ---------------------------------------------------------------------------------------------------
# Params at construction

BAD_PARAM = [
    pytest.param(lambda a: a.astype(np.int32), TypeError, id="int32"),
    pytest.param(lambda a: a.astype(np.int64), TypeError, id="int64"),
    pytest.param(lambda a: a.astype(np.int16), TypeError, id="int16"),
    pytest.param(lambda a: a.astype(">f2"), TypeError, id="big-endian-f2"),
    pytest.param(lambda a: a > 0, TypeError, id="bool"),
    pytest.param(lambda a: a.astype(np.complex64), TypeError, id="complex64"),
    pytest.param(lambda a: a.astype(np.complex128), TypeError, id="complex128"),
    pytest.param(lambda a: a.astype(object), TypeError, id="object"),
    pytest.param(lambda a: a.astype(">f4"), TypeError, id="big-endian-f4"),
    pytest.param(lambda a: a.astype(">f8"), TypeError, id="big-endian-f8"),
    pytest.param(lambda a: np.repeat(a, 2)[::2], ValueError, id="slice-with-step"),
    pytest.param(lambda a: np.stack([a, -a]).T, ValueError, id="transposed"),
    pytest.param(read_only, ValueError, id="read-only"),
    pytest.param(unaligned, ValueError, id="unaligned"),
    pytest.param(lambda a: a.tolist(), TypeError, id="python-list"),
    pytest.param(memoryview, TypeError, id="memoryview"),
    pytest.param(lambda a: None, TypeError, id="None"),
    pytest.param(lambda a: 1.0, TypeError, id="float"),
]
CONSTRUCTORS = [
    pytest.param(lambda ps: cadagrad.Adagrad(ps), id="Adagrad"),
    pytest.param(lambda ps: cadagrad.SGD(ps, lr=0.1), id="SGD"),
    pytest.param(lambda ps: cadagrad.SGD(ps, lr=0.1, momentum=0.9), id="SGD-momentum"),
    pytest.param(lambda ps: cadagrad.ProximalAdagrad(ps, lr=0.1), id="ProximalAdagrad"),
    pytest.param(lambda ps: cadagrad.AdagradDA(ps, lr=0.1), id="AdagradDA"),
]


@pytest.mark.parametrize("construct", CONSTRUCTORS)
@pytest.mark.parametrize("make_bad, exc", BAD_PARAM)
def test_bad_param_in_list_is_refused_naming_its_index(rng, construct, make_bad, exc):
    s = make_setup(rng)
    bad = make_bad(s.params[1])
    params = with_item(s.params, 1, bad)
    if isinstance(bad, np.ndarray):
        s.extra.append(bad)
    assert_untouched(s.arrays(), lambda: construct(params), exc, r"^params\[1\]:")


@pytest.mark.parametrize("construct", CONSTRUCTORS)
@pytest.mark.parametrize("make_bad, exc", BAD_PARAM)
def test_bad_single_param_is_refused_naming_params(rng, construct, make_bad, exc):
    param = random_array(rng, (6,), np.float64)
    bad = make_bad(param)
    match = r"^params\[0\]:" if isinstance(bad, list) else r"^params:"    # a list is a list of params
    assert_untouched([param, bad], lambda: construct(bad), exc, match)


@pytest.mark.parametrize("construct", [c for c in CONSTRUCTORS if c.id in ("ProximalAdagrad", "AdagradDA")])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_16_bit_param_is_refused_by_the_proximal_optimizers(rng, construct, dtype):
    s = make_setup(rng)
    bad = s.params[1].astype(dtype)
    s.extra.append(bad)
    assert_untouched(s.arrays(), lambda: construct(with_item(s.params, 1, bad)), TypeError, r"^params\[1\]:")


@pytest.mark.parametrize("construct", CONSTRUCTORS)
@pytest.mark.parametrize(
    "params, exc",
    [
        pytest.param([], ValueError, id="empty-list"),
        pytest.param((), ValueError, id="empty-tuple"),
        pytest.param(None, TypeError, id="None"),
        pytest.param({"w": np.ones(3)}, TypeError, id="dict"),
        pytest.param(1.5, TypeError, id="float"),
        pytest.param((np.ones(3) for _ in range(2)), TypeError, id="generator"),
    ],
)
def test_params_that_are_not_arrays_are_refused(construct, params, exc):
    with pytest.raises(exc, match=r"^params:"):
        construct(params)


def test_rowwise_adagrad_refuses_a_1d_param(rng):
    s = make_setup(rng)
    call = lambda: cadagrad.Adagrad(s.params, rowwise=True)  # noqa: E731
    assert_untouched(s.arrays(), call, ValueError, r"^params\[1\]:")


# ---------------------------------------------------------------------------------------------------
# Grads of a step: one bad grad among three (params[0] and params[1] must not move either)

BAD_GRAD = [
    pytest.param(lambda s, g: g.astype(np.int32), TypeError, id="int32"),
    pytest.param(lambda s, g: g.astype(np.int64), TypeError, id="int64"),
    pytest.param(lambda s, g: g.astype(np.float16), TypeError, id="float16"),
    pytest.param(lambda s, g: g > 0, TypeError, id="bool"),
    pytest.param(lambda s, g: g.astype(np.complex64), TypeError, id="complex"),
    pytest.param(lambda s, g: g.astype(object), TypeError, id="object"),
    pytest.param(lambda s, g: g.astype(np.float64), TypeError, id="float64-grad-for-float32-param"),
    pytest.param(lambda s, g: g.astype(">f4"), TypeError, id="big-endian"),
    pytest.param(lambda s, g: g.reshape(3, 2, 2), ValueError, id="other-shape-same-size"),
    pytest.param(lambda s, g: g.ravel(), ValueError, id="other-ndim"),
    pytest.param(lambda s, g: g[:1], ValueError, id="too-small"),
    pytest.param(lambda s, g: g.tolist(), TypeError, id="python-list"),
    pytest.param(lambda s, g: memoryview(g), TypeError, id="memoryview"),
    pytest.param(lambda s, g: None, TypeError, id="None"),
    pytest.param(lambda s, g: 0.5, TypeError, id="float"),
    pytest.param(lambda s, g: g.ravel()[0], TypeError, id="numpy-scalar"),
    pytest.param(lambda s, g: strided(g), ValueError, id="non-contiguous"),
    pytest.param(lambda s, g: transposed(g), ValueError, id="F-ordered"),
    pytest.param(lambda s, g: unaligned(g), ValueError, id="unaligned"),
    pytest.param(lambda s, g: s.shifted(2), ValueError, id="partly-overlaps-its-param"),
]


@pytest.mark.parametrize("make_bad, exc", BAD_GRAD)
def test_bad_last_grad_is_refused_before_any_param_moves(setup, make_bad, exc):
    grads = with_item(setup.grads, 2, make_bad(setup, setup.grads[2]))
    assert_untouched(setup.arrays(), lambda: setup.opt.step(grads), exc, r"^grads\[2\]:", [setup.opt])


def test_grad_sharing_memory_with_its_state_is_refused(stateful_setup):
    s = stateful_setup
    grads = with_item(s.grads, 2, state_arrays(s.opt)[2])
    match = r"^grads\[2\]: shares memory"
    assert_untouched(s.arrays(), lambda: s.opt.step(grads), ValueError, match, [s.opt])


BAD_GRAD_LIST = [
    pytest.param(lambda s: s.grads[:2], ValueError, id="two-for-three"),
    pytest.param(lambda s: [*s.grads, s.grads[0]], ValueError, id="four-for-three"),
    pytest.param(lambda s: [], ValueError, id="empty-list"),
    pytest.param(lambda s: s.grads[0], TypeError, id="one-array-for-a-list"),
    pytest.param(lambda s: None, TypeError, id="None"),
    pytest.param(lambda s: dict(enumerate(s.grads)), TypeError, id="dict"),
    pytest.param(lambda s: (g for g in s.grads), TypeError, id="generator"),
]


@pytest.mark.parametrize("make_grads, exc", BAD_GRAD_LIST)
def test_grads_not_matching_the_params_list_are_refused(setup, make_grads, exc):
    grads = make_grads(setup)
    assert_untouched(setup.arrays(), lambda: setup.opt.step(grads), exc, r"^grads:", [setup.opt])


BAD_SINGLE_GRAD = [
    pytest.param(lambda p, g, opt: (g,), TypeError, r"^grads: expected a numpy.ndarray",
                 id="tuple-for-one-array"),
    pytest.param(lambda p, g, opt: [g], TypeError, r"^grads: .*got list", id="list-for-one-array"),
    pytest.param(lambda p, g, opt: g.astype(np.float32), TypeError, r"^grads: expected dtype float64",
                 id="float32-for-float64"),
    pytest.param(lambda p, g, opt: np.ascontiguousarray(g.T), ValueError, r"^grads: expected shape",
                 id="transposed-shape"),
    pytest.param(lambda p, g, opt: memoryview(g), TypeError, r"^grads: .*got memoryview", id="memoryview"),
]


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("make_bad, exc, match", BAD_SINGLE_GRAD)
def test_bad_grad_for_a_single_param_optimizer_names_grads(rng, kind, make_bad, exc, match):
    param = random_array(rng, (4, 3), np.float64)
    grad = random_array(rng, (4, 3), np.float64)
    opt = OPTIMIZERS[kind](param)
    opt.step(random_array(rng, (4, 3), np.float64))
    bad = make_bad(param, grad, opt)
    assert_untouched([param, grad, *state_arrays(opt)], lambda: opt.step(bad), exc, match, [opt])


class GradList(list):
    """A list subclass, as some frameworks hand out."""


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_grads_as_a_list_subclass_step_like_a_list(rng, kind):
    s = make_optimizer_setup(rng, kind)
    twin_params = [p.copy() for p in s.params]
    twin = OPTIMIZERS[kind](twin_params)
    twin.load_state_dict(s.opt.state_dict())
    assert s.opt.step(GradList(s.grads))
    twin.step(list(s.grads))
    assert fingerprint(s.opt) == fingerprint(twin)


@pytest.mark.parametrize("flag", ["no", 1, None], ids=["str", "int", "None"])
def test_optimizer_step_refuses_a_non_bool_skip_flag(setup, flag):
    assert_untouched(
        setup.arrays(), lambda: setup.opt.step(setup.grads, skip_if_nonfinite=flag), TypeError,
        r"^skip_if_nonfinite:", [setup.opt],
    )


# ---------------------------------------------------------------------------------------------------
# Params (or state) changed after construction


def test_param_made_read_only_after_construction_is_refused_naming_it(setup):
    setup.params[1].flags.writeable = False
    assert_untouched(
        setup.arrays(), lambda: setup.opt.step(setup.grads), ValueError, r"^params\[1\]: expected a writable",
        [setup.opt],
    )


def test_single_param_made_read_only_after_construction_is_refused(rng):
    param = random_array(rng, (7,), np.float32)
    grad = random_array(rng, (7,), np.float32)
    opt = cadagrad.Adagrad(param)
    param.flags.writeable = False
    assert_untouched([param, grad, *opt.sums], lambda: opt.step(grad), ValueError, r"^params", [opt])


def test_state_made_read_only_after_construction_is_refused(stateful_setup):
    s = stateful_setup
    state_arrays(s.opt)[1].flags.writeable = False
    match = r"\[1\]: expected a writable"        # the message says "state[1]"
    assert_untouched(s.arrays(), lambda: s.opt.step(s.grads), ValueError, match, [s.opt])


@pytest.mark.parametrize("new_dtype", [np.int64, ">f8"], ids=["int64", "big-endian"])
def test_param_dtype_changed_after_construction_is_refused(setup, new_dtype):
    setup.params[1].dtype = new_dtype                    # params[1] is float64: same itemsize
    grads = with_item(setup.grads, 1, setup.grads[1].astype(setup.params[1].dtype.newbyteorder("=")))
    assert_untouched(setup.arrays(), lambda: setup.opt.step(grads), TypeError, r"^params\[1\]:")


# ---------------------------------------------------------------------------------------------------
# Memory shared between params, grads and state


@pytest.mark.parametrize("construct", CONSTRUCTORS)
@pytest.mark.parametrize(
    "make_params",
    [
        pytest.param(lambda buf: [buf[:6], buf[:6]], id="same-view-twice"),
        pytest.param(lambda buf: [buf, buf], id="same-array-twice"),
        pytest.param(lambda buf: [buf[:6], buf[4:10]], id="overlapping-views"),
        pytest.param(lambda buf: [buf[4:10], buf[:6]], id="overlapping-views-reversed"),
        pytest.param(lambda buf: [buf.reshape(4, 5)[1:3], buf[12:20]], id="overlapping-2d-and-1d"),
    ],
)
def test_params_sharing_memory_are_refused(rng, construct, make_params):
    buf = random_array(rng, (20,), np.float32)
    assert_untouched([buf], lambda: construct(make_params(buf)), ValueError, r"^params\[1\]: shares memory")


@pytest.mark.parametrize("construct", CONSTRUCTORS)
def test_overlapping_params_with_an_empty_view_between_are_refused(rng, construct):
    buf = random_array(rng, (100,), np.float32)
    params = [buf[:50], empty_view_at(buf, 40), buf[40:60]]   # byte ranges [0,200), [160,160), [160,240)
    match = r"^params\[2\]: shares memory with params\[0\]"
    assert_untouched([buf], lambda: construct(params), ValueError, match)


@pytest.mark.parametrize("kind", STATEFUL)
def test_grad_that_is_the_single_state_buffer_is_refused(rng, kind):
    param = random_array(rng, (9,), np.float32)
    opt = OPTIMIZERS[kind](param)
    opt.step(random_array(rng, (9,), np.float32))
    call = lambda: opt.step(state_arrays(opt)[0])  # noqa: E731
    assert_untouched([param, *state_arrays(opt)], call, ValueError, r"^grads: shares memory", [opt])


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_grad_partly_overlapping_its_single_param_is_refused(rng, kind):
    base = random_array(rng, (10,), np.float64)
    param = base[:9]
    opt = OPTIMIZERS[kind](param)
    call = lambda: opt.step(base[1:])  # noqa: E731
    assert_untouched([base, *state_arrays(opt)], call, ValueError, r"^grads: shares memory with params", [opt])


def two_param_setup(rng, kind):
    """Two params of the same shape and dtype, so one's buffers could serve as the other's grad."""
    params = [random_array(rng, (64,), np.float32) for _ in range(2)]
    opt = OPTIMIZERS[kind](params)
    opt.step(random_grads(rng, params))
    return params, opt


@pytest.mark.parametrize("kind", STATEFUL)
def test_grad_sharing_memory_with_another_params_state_is_refused(rng, kind):
    params, opt = two_param_setup(rng, kind)
    other = state_arrays(opt)[1]
    grads = [other, random_array(rng, (64,), np.float32)]
    arrays = [*params, *grads, *state_arrays(opt)]
    assert_untouched(arrays, lambda: opt.step(grads), ValueError, r"^grads\[0\]:", [opt])


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_grad_that_is_another_param_is_refused(rng, kind):
    params, opt = two_param_setup(rng, kind)
    grads = [params[1], random_array(rng, (64,), np.float32)]
    arrays = [*params, *grads, *state_arrays(opt)]
    assert_untouched(arrays, lambda: opt.step(grads), ValueError, r"^grads\[0\]:", [opt])


# ---------------------------------------------------------------------------------------------------
# Hyperparameters at construction

BAD_NUMBERS = [
    pytest.param(-1.0, ValueError, id="negative"),
    pytest.param(-1e-300, ValueError, id="tiny-negative"),
    pytest.param(math.nan, ValueError, id="nan"),
    pytest.param(math.inf, ValueError, id="inf"),
    pytest.param(-math.inf, ValueError, id="-inf"),
    pytest.param(np.float32("nan"), ValueError, id="numpy-nan"),
    pytest.param("0.1", TypeError, id="string"),
    pytest.param(None, TypeError, id="None"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param(0.1 + 0j, TypeError, id="complex"),
    pytest.param(np.array([0.1]), TypeError, id="array"),
]
NON_FINITE_OR_NOT_A_NUMBER = [p for p in BAD_NUMBERS if p.id not in ("negative", "tiny-negative")]
BAD_FLAGS = [
    pytest.param("yes", id="string"),
    pytest.param(1, id="int-1"),
    pytest.param(0, id="int-0"),
    pytest.param(None, id="None"),
]
BAD_THREADS = [
    pytest.param(0, ValueError, id="zero"),
    pytest.param(-1, ValueError, id="negative"),
    pytest.param(1.5, TypeError, id="float"),
    pytest.param(2.0, TypeError, id="integral-float"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param("2", TypeError, id="string"),
]

ADAGRAD_NUMBERS = ("lr", "lr_decay", "weight_decay", "eps", "initial_accumulator_value")
SGD_NUMBERS = ("lr", "momentum", "weight_decay")
PROXIMAL_NUMBERS = ("lr", "l1", "l2", "initial_accumulator_value")
PROXIMAL_CLASSES = (cadagrad.ProximalAdagrad, cadagrad.AdagradDA)


def construct(cls, **options):
    if cls is cadagrad.SGD or cls in PROXIMAL_CLASSES:
        options.setdefault("lr", 0.1)
    return lambda params: cls(params, **options)


@pytest.mark.parametrize(
    "cls, name",
    [(cadagrad.Adagrad, n) for n in ADAGRAD_NUMBERS] + [(cadagrad.SGD, n) for n in SGD_NUMBERS]
    + [(cls, n) for cls in PROXIMAL_CLASSES for n in PROXIMAL_NUMBERS],
    ids=lambda v: v.__name__ if isinstance(v, type) else v,
)
@pytest.mark.parametrize("value, exc", BAD_NUMBERS)
def test_bad_number_hyperparameter_is_refused(rng, cls, name, value, exc):
    s = make_setup(rng)
    assert_untouched(s.arrays(), lambda: construct(cls, **{name: value})(s.params), exc, rf"^{name}:")


@pytest.mark.parametrize("cls", PROXIMAL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["lr", "initial_accumulator_value"])
@pytest.mark.parametrize("value", [0.0, -0.0, 0])
def test_proximal_lr_and_initial_accumulator_must_be_positive(rng, cls, name, value):
    s = make_setup(rng)
    make = construct(cls, **{name: value})
    assert_untouched(s.arrays(), lambda: make(s.params), ValueError, rf"^{name}: expected a value > 0, got")


@pytest.mark.parametrize("cls", PROXIMAL_CLASSES, ids=lambda c: c.__name__)
def test_proximal_lr_is_required(rng, cls):
    s = make_setup(rng)
    assert_untouched(s.arrays(), lambda: cls(s.params), TypeError, "lr")


@pytest.mark.parametrize("value, exc", NON_FINITE_OR_NOT_A_NUMBER)
def test_bad_dampening_is_refused(rng, value, exc):
    s = make_setup(rng)
    make = construct(cadagrad.SGD, momentum=0.9, dampening=value)
    assert_untouched(s.arrays(), lambda: make(s.params), exc, r"^dampening:")


@pytest.mark.parametrize("cls", [cadagrad.Adagrad, cadagrad.SGD], ids=["Adagrad", "SGD"])
def test_integer_too_large_for_a_float_is_refused_naming_lr(rng, cls):
    s = make_setup(rng)
    assert_untouched(s.arrays(), lambda: construct(cls, lr=10**400)(s.params), ValueError, r"^lr:")


@pytest.mark.parametrize(
    "cls, name",
    [(cadagrad.Adagrad, n) for n in ("eps_inside_sqrt", "maximize", "rowwise")]
    + [(cadagrad.SGD, n) for n in ("nesterov", "maximize")],
    ids=lambda v: v.__name__ if isinstance(v, type) else v,
)
@pytest.mark.parametrize("value", BAD_FLAGS)
def test_non_bool_flag_is_refused(rng, cls, name, value):
    s = make_setup(rng)
    options = {name: value, "momentum": 0.9} if cls is cadagrad.SGD else {name: value}
    make = construct(cls, **options)
    assert_untouched(s.arrays(), lambda: make(s.params), TypeError, rf"^{name}:")


@pytest.mark.parametrize("cls", [cadagrad.Adagrad, cadagrad.SGD], ids=["Adagrad", "SGD"])
@pytest.mark.parametrize("value, exc", BAD_THREADS)
def test_bad_num_threads_is_refused(rng, cls, value, exc):
    s = make_setup(rng)
    assert_untouched(s.arrays(), lambda: construct(cls, num_threads=value)(s.params), exc, r"^num_threads:")


@pytest.mark.parametrize("cls", [cadagrad.Adagrad, cadagrad.SGD], ids=["Adagrad", "SGD"])
def test_num_threads_too_large_for_a_c_int_is_refused_or_works(rng, cls):
    s = make_setup(rng)
    try:
        opt = construct(cls, num_threads=2**31)(s.params)
    except ValueError as error:
        assert str(error).startswith("num_threads:")
        return
    opt.step(s.grads)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"nesterov": True}, id="no-momentum"),
        pytest.param({"nesterov": True, "momentum": 0.0, "dampening": 0.0}, id="zero-momentum"),
        pytest.param({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, id="with-dampening"),
        pytest.param({"nesterov": True, "momentum": 0.9, "dampening": -0.1}, id="negative-dampening"),
    ],
)
def test_nesterov_needs_momentum_and_no_dampening(rng, options):
    s = make_setup(rng)
    assert_untouched(s.arrays(), lambda: cadagrad.SGD(s.params, lr=0.1, **options), ValueError, r"^nesterov:")


# ---------------------------------------------------------------------------------------------------
# Hyperparameters as attributes

VALIDATED_ATTRIBUTES = [
    *[("adagrad", n) for n in ("lr", "lr_decay", "weight_decay", "eps")],
    *[("sgd_momentum", n) for n in ("lr", "weight_decay")],
    *[(k, n) for k in ("proximal_adagrad", "adagrad_da") for n in ("lr", "l1", "l2")],
]
FIXED_ATTRIBUTES = [
    ("adagrad", "initial_accumulator_value", 0.5),
    ("adagrad", "eps_inside_sqrt", True),
    ("adagrad", "maximize", True),
    ("adagrad", "rowwise", True),
    ("sgd_momentum", "momentum", 0.5),
    ("sgd_momentum", "dampening", 0.0),
    ("sgd_momentum", "nesterov", True),
    ("sgd_momentum", "maximize", True),
    ("proximal_adagrad", "initial_accumulator_value", 0.5),
    ("adagrad_da", "initial_accumulator_value", 0.5),
]


def optimizer_and_twin(rng, kind):
    s = make_optimizer_setup(rng, kind)
    twin = OPTIMIZERS[kind]([p.copy() for p in s.params])
    twin.load_state_dict(s.opt.state_dict())
    return s, twin


@pytest.mark.parametrize(
    "kind, name", VALIDATED_ATTRIBUTES, ids=[f"{k}-{n}" for k, n in VALIDATED_ATTRIBUTES]
)
@pytest.mark.parametrize("value, exc", BAD_NUMBERS)
def test_setting_a_hyperparameter_to_a_bad_value_is_refused(rng, kind, name, value, exc):
    s, twin = optimizer_and_twin(rng, kind)
    old = getattr(s.opt, name)
    assert_untouched(s.arrays(), lambda: setattr(s.opt, name, value), exc, rf"^{name}:", [s.opt])
    assert getattr(s.opt, name) == old
    assert_same_as_twin(s.opt, twin, s.grads)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("value, exc", BAD_THREADS)
def test_setting_num_threads_to_a_bad_value_is_refused(rng, kind, value, exc):
    s = make_optimizer_setup(rng, kind)
    s.opt.num_threads = 2
    assert_untouched(s.arrays(), lambda: setattr(s.opt, "num_threads", value), exc, r"^num_threads:", [s.opt])
    assert s.opt.num_threads == 2


@pytest.mark.parametrize(
    "kind, name, value", FIXED_ATTRIBUTES, ids=[f"{k}-{n}" for k, n, _ in FIXED_ATTRIBUTES]
)
def test_setting_a_fixed_option_raises_attribute_error(rng, kind, name, value):
    s, twin = optimizer_and_twin(rng, kind)
    old = getattr(s.opt, name)
    call = lambda: setattr(s.opt, name, value)  # noqa: E731
    assert_untouched(s.arrays(), call, AttributeError, rf"^{name} is fixed", [s.opt])
    assert getattr(s.opt, name) == old
    assert_same_as_twin(s.opt, twin, s.grads)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_step_count_cannot_be_set(rng, kind):
    s = make_optimizer_setup(rng, kind)
    call = lambda: setattr(s.opt, "step_count", 0)  # noqa: E731
    assert_untouched(s.arrays(), call, AttributeError, r"step_count", [s.opt])


# ---------------------------------------------------------------------------------------------------
# load_state_dict: a bad state dict leaves the optimizer as it was


def source_state_dict(rng, kind):
    """A valid state dict that differs from the target in everything (options, step count, state)."""
    s = make_setup(rng)
    if kind == "adagrad":
        source = cadagrad.Adagrad(s.params, lr=0.5, lr_decay=0.1, eps=1e-6, initial_accumulator_value=0.3)
    elif kind == "proximal_adagrad":
        source = cadagrad.ProximalAdagrad(s.params, lr=0.5, l1=0.2, l2=0.1, initial_accumulator_value=0.3)
    elif kind == "adagrad_da":
        source = cadagrad.AdagradDA(s.params, lr=0.5, l1=0.2, l2=0.1, initial_accumulator_value=0.3)
    else:
        source = cadagrad.SGD(s.params, lr=0.5, momentum=0.5, dampening=0.2)
    for _ in range(3):
        source.step(random_grads(rng, s.params))
    return source.state_dict()


def other_class_state_dict(rng, kind):
    return source_state_dict(rng, "adagrad" if kind == "sgd_momentum" else "sgd_momentum")


def set_hyper(name, value):
    def mutate(sd, key, other):
        sd["hyperparameters"][name] = value
        return sd
    return mutate


def set_entry(name, value):
    def mutate(sd, key, other):
        sd[name] = value
        return sd
    return mutate


def set_state(i, make):
    def mutate(sd, key, other):
        sd[key][i] = make(sd[key][i])
        return sd
    return mutate


def drop(name):
    def mutate(sd, key, other):
        del sd[name]
        return sd
    return mutate


COMMON_BAD_STATE_DICTS = [
    pytest.param(lambda sd, key, other: other, ValueError, r"^state_dict:", id="other-optimizer-class"),
    pytest.param(set_entry("optimizer", "Adam"), ValueError, r"^state_dict\['optimizer'\]:", id="other-name"),
    pytest.param(lambda sd, key, other: list(sd.items()), TypeError, r"^state_dict:", id="not-a-dict"),
    pytest.param(set_entry("version", 2), ValueError, r"^state_dict\['version'\]:", id="version-2"),
    pytest.param(set_entry("version", 0), ValueError, r"^state_dict\['version'\]:", id="version-0"),
    pytest.param(set_entry("version", "1"), ValueError, r"^state_dict\['version'\]:", id="version-string"),
    pytest.param(drop("step"), ValueError, r"^state_dict:", id="missing-step"),
    pytest.param(lambda sd, key, other: drop(key)(sd, key, other), ValueError, r"^state_dict:",
                 id="missing-state"),
    pytest.param(drop("hyperparameters"), ValueError, r"^state_dict:", id="missing-hyperparameters"),
    pytest.param(set_entry("extra", 1), ValueError, r"^state_dict:", id="extra-key"),
    pytest.param(set_entry("step", -1), ValueError, r"^state_dict\['step'\]:", id="negative-step"),
    pytest.param(set_entry("step", 2.0), ValueError, r"^state_dict\['step'\]:", id="float-step"),
    pytest.param(set_entry("step", "3"), ValueError, r"^state_dict\['step'\]:", id="string-step"),
    pytest.param(set_entry("step", None), ValueError, r"^state_dict\['step'\]:", id="None-step"),
    pytest.param(set_entry("step", True), ValueError, r"^state_dict\['step'\]:", id="bool-step"),
    pytest.param(
        set_entry("step", 2**64), ValueError, r"^state_dict\['step'\]:", id="step-beyond-int64",
    ),
    pytest.param(set_entry("hyperparameters", [("lr", 0.1)]), ValueError,
                 r"^state_dict\['hyperparameters'\]:", id="hyperparameters-not-a-dict"),
    pytest.param(lambda sd, key, other: (sd["hyperparameters"].pop("lr"), sd)[1], ValueError,
                 r"^state_dict\['hyperparameters'\]:", id="hyperparameter-missing"),
    pytest.param(set_hyper("betas", (0.9, 0.99)), ValueError, r"^state_dict\['hyperparameters'\]:",
                 id="hyperparameter-extra"),
    pytest.param(set_hyper("lr", -0.1), ValueError, r"^lr:", id="negative-lr"),
    pytest.param(set_hyper("lr", math.nan), ValueError, r"^lr:", id="nan-lr"),
    pytest.param(set_hyper("lr", "0.1"), TypeError, r"^lr:", id="string-lr"),
    pytest.param(set_hyper("weight_decay", -1.0), ValueError, r"^weight_decay:", id="negative-weight-decay"),
    pytest.param(set_hyper("maximize", "yes"), TypeError, r"^maximize:", id="string-maximize"),
    pytest.param(lambda sd, key, other: (sd.__setitem__(key, sd[key][:2]), sd)[1], ValueError,
                 r"^state_dict\['(sum|momentum_buffer)'\]:", id="state-list-too-short"),
    pytest.param(lambda sd, key, other: (sd.__setitem__(key, [*sd[key], sd[key][0]]), sd)[1], ValueError,
                 r"^state_dict\['(sum|momentum_buffer)'\]:", id="state-list-too-long"),
    pytest.param(lambda sd, key, other: (sd.__setitem__(key, None), sd)[1], ValueError,
                 r"^state_dict\['(sum|momentum_buffer)'\]:", id="state-None-after-steps"),
    pytest.param(lambda sd, key, other: (sd.__setitem__(key, sd[key][0]), sd)[1], ValueError,
                 r"^state_dict\['(sum|momentum_buffer)'\]:", id="state-one-array"),
    pytest.param(set_state(1, lambda a: a[:-1]), ValueError, r"^state_dict\['(sum|momentum_buffer)'\]\[1\]:",
                 id="state-array-wrong-shape"),
    pytest.param(set_state(2, lambda a: a.reshape(3, 4)), ValueError,
                 r"^state_dict\['(sum|momentum_buffer)'\]\[2\]:", id="state-array-same-size-other-shape"),
    pytest.param(set_state(1, lambda a: a.astype(np.float32)), TypeError,
                 r"^state_dict\['(sum|momentum_buffer)'\]\[1\]:", id="state-array-wrong-dtype"),
    pytest.param(set_state(1, lambda a: a.astype(">f8")), TypeError,
                 r"^state_dict\['(sum|momentum_buffer)'\]\[1\]:", id="state-array-big-endian"),
    pytest.param(set_state(0, transposed), ValueError, r"^state_dict\['(sum|momentum_buffer)'\]\[0\]:",
                 id="state-array-F-ordered"),
    pytest.param(set_state(1, lambda a: a.tolist()), TypeError,
                 r"^state_dict\['(sum|momentum_buffer)'\]\[1\]:", id="state-python-list"),
]
ADAGRAD_BAD_STATE_DICTS = [
    pytest.param(set_hyper("rowwise", True), ValueError, r"^state_dict\['hyperparameters'\]\['rowwise'\]:",
                 id="rowwise-changed"),
    pytest.param(set_hyper("initial_accumulator_value", -1.0), ValueError, r"^initial_accumulator_value:",
                 id="negative-initial-accumulator"),
    pytest.param(set_hyper("eps", math.inf), ValueError, r"^eps:", id="inf-eps"),
    pytest.param(set_hyper("lr_decay", -0.5), ValueError, r"^lr_decay:", id="negative-lr-decay"),
]
SGD_BAD_STATE_DICTS = [
    pytest.param(set_hyper("nesterov", True), ValueError, r"^nesterov:", id="nesterov-with-dampening"),
    pytest.param(set_hyper("momentum", -0.5), ValueError, r"^momentum:", id="negative-momentum"),
    pytest.param(set_hyper("momentum", 0.0), ValueError, r"^state_dict\['momentum_buffer'\]: expected None",
                 id="buffers-without-momentum"),
]


def check_bad_state_dict_refused(rng, kind, mutate, exc, match):
    s, twin = optimizer_and_twin(rng, kind)
    sd = source_state_dict(rng, kind)
    key = "momentum_buffer" if kind == "sgd_momentum" else "sum"
    bad = mutate(copy.deepcopy(sd), key, other_class_state_dict(rng, kind))
    held = bad.get(key) if isinstance(bad, dict) else None
    held = [held] if isinstance(held, np.ndarray) else list(held or [])
    assert_untouched(s.arrays() + held, lambda: s.opt.load_state_dict(bad), exc, match, [s.opt])
    assert_same_as_twin(s.opt, twin, s.grads)


@pytest.mark.parametrize("kind", STATEFUL)
def test_the_source_state_dict_itself_loads(rng, kind):
    """Control: the unmodified source is valid, so each failure below is due to its one change."""
    s = make_optimizer_setup(rng, kind)
    sd = source_state_dict(rng, kind)
    s.opt.load_state_dict(sd)
    assert s.opt.step_count == sd["step"]
    assert s.opt.state_dict()["hyperparameters"] == sd["hyperparameters"]


@pytest.mark.parametrize("kind", STATEFUL)
@pytest.mark.parametrize("mutate, exc, match", COMMON_BAD_STATE_DICTS)
def test_bad_state_dict_is_refused_and_optimizer_unchanged(rng, kind, mutate, exc, match):
    if kind in ("proximal_adagrad", "adagrad_da") and match in (r"^weight_decay:", r"^maximize:"):
        exc, match = ValueError, r"^state_dict\['hyperparameters'\]:"   # no such option: its key is refused
    check_bad_state_dict_refused(rng, kind, mutate, exc, match)


@pytest.mark.parametrize("mutate, exc, match", ADAGRAD_BAD_STATE_DICTS)
def test_bad_adagrad_state_dict_is_refused_and_optimizer_unchanged(rng, mutate, exc, match):
    check_bad_state_dict_refused(rng, "adagrad", mutate, exc, match)


@pytest.mark.parametrize("mutate, exc, match", SGD_BAD_STATE_DICTS)
def test_bad_sgd_state_dict_is_refused_and_optimizer_unchanged(rng, mutate, exc, match):
    check_bad_state_dict_refused(rng, "sgd_momentum", mutate, exc, match)


PROXIMAL_BAD_STATE_DICTS = [
    pytest.param(set_hyper("lr", 0.0), ValueError, r"^lr: expected a value > 0", id="zero-lr"),
    pytest.param(set_hyper("l1", -0.5), ValueError, r"^l1:", id="negative-l1"),
    pytest.param(set_hyper("l2", math.inf), ValueError, r"^l2:", id="inf-l2"),
    pytest.param(set_hyper("initial_accumulator_value", 0.0), ValueError, r"^initial_accumulator_value:",
                 id="zero-initial-accumulator"),
]
DA_BAD_STATE_DICTS = [
    pytest.param(drop("grad_sum"), ValueError, r"^state_dict:", id="missing-grad-sum"),
    pytest.param(set_entry("grad_sum", None), ValueError, r"^state_dict\['grad_sum'\]:", id="grad-sum-None"),
    pytest.param(lambda sd, key, other: (sd.__setitem__("grad_sum", sd["grad_sum"][:2]), sd)[1], ValueError,
                 r"^state_dict\['grad_sum'\]:", id="grad-sum-list-too-short"),
    pytest.param(lambda sd, key, other: (sd["grad_sum"].__setitem__(1, sd["grad_sum"][1][:-1]), sd)[1],
                 ValueError, r"^state_dict\['grad_sum'\]\[1\]:", id="grad-sum-wrong-shape"),
]


@pytest.mark.parametrize("kind", ["proximal_adagrad", "adagrad_da"])
@pytest.mark.parametrize("mutate, exc, match", PROXIMAL_BAD_STATE_DICTS)
def test_bad_proximal_state_dict_is_refused_and_optimizer_unchanged(rng, kind, mutate, exc, match):
    check_bad_state_dict_refused(rng, kind, mutate, exc, match)


@pytest.mark.parametrize("mutate, exc, match", DA_BAD_STATE_DICTS)
def test_bad_adagrad_da_grad_sums_are_refused_and_optimizer_unchanged(rng, mutate, exc, match):
    check_bad_state_dict_refused(rng, "adagrad_da", mutate, exc, match)


def test_sgd_state_dict_without_momentum_into_adagrad_is_refused(rng):
    s, twin = optimizer_and_twin(rng, "adagrad")
    plain = cadagrad.SGD([p.copy() for p in s.params], lr=0.3)
    plain.step(random_grads(rng, s.params))
    call = lambda: s.opt.load_state_dict(plain.state_dict())  # noqa: E731
    assert_untouched(s.arrays(), call, ValueError, r"^state_dict:", [s.opt])
    assert_same_as_twin(s.opt, twin, s.grads)


# ---------------------------------------------------------------------------------------------------
# The functional layer: caller-owned sums and momentum buffers


@dataclass
class FunctionalSetup(Setup):
    sums: list[np.ndarray] = field(default_factory=list)
    buffers: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> list[np.ndarray]:
        return [*super().arrays(), *self.sums, *self.buffers]


@pytest.fixture
def fs(rng) -> FunctionalSetup:
    s = make_setup(rng)
    return FunctionalSetup(
        s.bases, s.params, s.grads,
        sums=[np.abs(random_array(rng, p.shape, p.dtype)) for p in s.params],
        buffers=random_grads(rng, s.params),
    )


def adagrad_call(fs, *, grads=None, sums=None, **options):
    options.setdefault("step", 3)
    grads = fs.grads if grads is None else grads
    sums = fs.sums if sums is None else sums
    return lambda: cadagrad.adagrad_step(fs.params, grads, sums, lr=0.1, **options)


def sgd_call(fs, *, grads=None, buffers=None, **options):
    options.setdefault("step", 3)
    options.setdefault("momentum", 0.9)
    options.setdefault("lr", 0.1)
    grads = fs.grads if grads is None else grads
    buffers = fs.buffers if buffers is None else buffers
    return lambda: cadagrad.sgd_step(fs.params, grads, buffers, **options)


BAD_STATE_ARGUMENTS = [
    pytest.param(lambda fs, st: with_item(st, 1, st[1][:-1]), ValueError, r"^{}\[1\]:", id="wrong-shape"),
    pytest.param(lambda fs, st: with_item(st, 1, st[1].astype(np.float32)), TypeError, r"^{}\[1\]:",
                 id="wrong-dtype"),
    pytest.param(lambda fs, st: with_item(st, 1, st[1].astype(">f8")), TypeError, r"^{}\[1\]:",
                 id="big-endian"),
    pytest.param(lambda fs, st: with_item(st, 2, strided(st[2])), ValueError, r"^{}\[2\]:",
                 id="non-contiguous"),
    pytest.param(lambda fs, st: with_item(st, 1, read_only(st[1])), ValueError, r"^{}\[1\]:", id="read-only"),
    pytest.param(lambda fs, st: with_item(st, 1, st[1].tolist()), TypeError, r"^{}\[1\]:", id="python-list"),
    pytest.param(lambda fs, st: st[:2], ValueError, r"^{}:", id="too-few"),
    pytest.param(lambda fs, st: st[0], TypeError, r"^{}:", id="one-array-for-a-list"),
    pytest.param(lambda fs, st: with_item(st, 1, fs.params[1]), ValueError, r"{}\[1\]", id="is-its-param"),
    pytest.param(lambda fs, st: with_item(st, 2, fs.shifted(2)), ValueError, r"{}\[2\]",
                 id="overlaps-its-param"),
]


@pytest.mark.parametrize("make_bad, exc, match", BAD_STATE_ARGUMENTS)
def test_adagrad_step_refuses_bad_sums(fs, make_bad, exc, match):
    sums = make_bad(fs, fs.sums)
    assert_untouched(fs.arrays(), adagrad_call(fs, sums=sums), exc, match.format("sums"))


@pytest.mark.parametrize("make_bad, exc, match", BAD_STATE_ARGUMENTS)
def test_sgd_step_refuses_bad_momentum_buffers(fs, make_bad, exc, match):
    buffers = make_bad(fs, fs.buffers)
    assert_untouched(fs.arrays(), sgd_call(fs, buffers=buffers), exc, match.format("momentum_buffers"))


def proximal_call(fs, *, grads=None, sums=None, **options):
    grads = fs.grads if grads is None else grads
    sums = fs.sums if sums is None else sums
    options.setdefault("lr", 0.1)
    return lambda: cadagrad.proximal_adagrad_step(fs.params, grads, sums, **options)


def adagrad_da_call(fs, *, grads=None, grad_sums=None, sums=None, **options):
    grads = fs.grads if grads is None else grads
    grad_sums = fs.buffers if grad_sums is None else grad_sums
    sums = fs.sums if sums is None else sums
    options.setdefault("lr", 0.1)
    options.setdefault("step", 3)
    return lambda: cadagrad.adagrad_da_step(fs.params, grads, grad_sums, sums, **options)


@pytest.mark.parametrize("make_bad, exc, match", BAD_STATE_ARGUMENTS)
def test_proximal_adagrad_step_refuses_bad_sums(fs, make_bad, exc, match):
    sums = make_bad(fs, fs.sums)
    assert_untouched(fs.arrays(), proximal_call(fs, sums=sums), exc, match.format("sums"))


@pytest.mark.parametrize("make_bad, exc, match", BAD_STATE_ARGUMENTS)
@pytest.mark.parametrize("which", ["sums", "grad_sums"])
def test_adagrad_da_step_refuses_bad_sums_and_grad_sums(fs, make_bad, exc, match, which):
    given = make_bad(fs, fs.sums if which == "sums" else fs.buffers)
    assert_untouched(fs.arrays(), adagrad_da_call(fs, **{which: given}), exc, match.format(which))


def test_adagrad_da_step_refuses_grad_sums_sharing_memory_with_sums(fs):
    call = adagrad_da_call(fs, grad_sums=with_item(fs.buffers, 1, fs.sums[1]))
    assert_untouched(fs.arrays(), call, ValueError, r"^(grad_sums|sums)\[1\]: shares memory with")


def test_adagrad_da_step_refuses_a_grad_that_is_a_grad_sum(fs):
    call = adagrad_da_call(fs, grads=with_item(fs.grads, 2, fs.buffers[2]))
    assert_untouched(fs.arrays(), call, ValueError, r"^grads\[2\]: shares memory with the optimizer state")


@pytest.mark.parametrize("name", ["lr", "l1", "l2"])
@pytest.mark.parametrize("value, exc", BAD_NUMBERS)
@pytest.mark.parametrize("call", [proximal_call, adagrad_da_call], ids=["proximal", "adagrad_da"])
def test_proximal_steps_refuse_bad_hyperparameters(fs, name, value, exc, call):
    assert_untouched(fs.arrays(), call(fs, **{name: value}), exc, rf"^{name}:")


def test_adagrad_step_refuses_missing_sums():
    # In a child process: today this call kills the interpreter.
    code = textwrap.dedent(
        """
        import numpy as np, cadagrad
        rng = np.random.default_rng(7)
        for params in (rng.standard_normal(8).astype(np.float32),
                       [rng.standard_normal(8).astype(np.float32), rng.standard_normal((2, 3))]):
            arrays = params if isinstance(params, list) else [params]
            grads = [rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]
            before = [a.tobytes() for a in arrays + grads]
            try:
                cadagrad.adagrad_step(params, grads if isinstance(params, list) else grads[0], None, step=1)
            except TypeError as error:
                assert str(error).startswith("sums:"), error
            else:
                raise SystemExit("adagrad_step(params, grads, None) did not raise")
            assert [a.tobytes() for a in arrays + grads] == before, "a buffer was written"
        """
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"exit status {child.returncode}: {child.stderr[-2000:]}"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda fs: cadagrad.sgd_step(fs.params, fs.grads, None, step=2, lr=0.1, momentum=0.9),
                     id="None"),
        pytest.param(lambda fs: cadagrad.sgd_step(fs.params, fs.grads, step=2, lr=0.1, momentum=0.9),
                     id="omitted"),
    ],
)
def test_sgd_step_with_momentum_needs_momentum_buffers(fs, call):
    assert_untouched(fs.arrays(), lambda: call(fs), ValueError, r"^momentum_buffers: required")


BAD_STEPS = [
    pytest.param(0, ValueError, id="zero"),
    pytest.param(-1, ValueError, id="negative"),
    pytest.param(1.0, TypeError, id="float"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param(None, TypeError, id="None"),
    pytest.param("1", TypeError, id="string"),
    pytest.param(
        2**64, ValueError, id="beyond-int64",
    ),
]


@pytest.mark.parametrize("value, exc", BAD_STEPS)
def test_adagrad_step_refuses_a_bad_step(fs, value, exc):
    assert_untouched(fs.arrays(), adagrad_call(fs, step=value), exc, r"^step:")


@pytest.mark.parametrize("value, exc", BAD_STEPS)
def test_sgd_step_refuses_a_bad_step(fs, value, exc):
    assert_untouched(fs.arrays(), sgd_call(fs, step=value), exc, r"^step:")


@pytest.mark.parametrize("value, exc", BAD_STEPS)
def test_adagrad_da_step_refuses_a_bad_step(fs, value, exc):
    assert_untouched(fs.arrays(), adagrad_da_call(fs, step=value), exc, r"^step:")


@pytest.mark.parametrize(
    "name", ["lr", "lr_decay", "weight_decay", "eps"],
)
@pytest.mark.parametrize("value, exc", BAD_NUMBERS)
def test_adagrad_step_refuses_bad_hyperparameters(fs, name, value, exc):
    options = {"step": 2, name: value}
    call = lambda: cadagrad.adagrad_step(fs.params, fs.grads, fs.sums, **options)  # noqa: E731
    assert_untouched(fs.arrays(), call, exc, rf"^{name}:")


@pytest.mark.parametrize("name", ["lr", "momentum", "weight_decay"])
@pytest.mark.parametrize("value, exc", BAD_NUMBERS)
def test_sgd_step_refuses_bad_hyperparameters(fs, name, value, exc):
    assert_untouched(fs.arrays(), sgd_call(fs, **{name: value}), exc, rf"^{name}:")


@pytest.mark.parametrize("value", BAD_FLAGS)
@pytest.mark.parametrize(
    "call, name",
    [
        pytest.param(adagrad_call, "eps_inside_sqrt", id="adagrad-eps_inside_sqrt"),
        pytest.param(adagrad_call, "maximize", id="adagrad-maximize"),
        pytest.param(adagrad_call, "skip_if_nonfinite", id="adagrad-skip_if_nonfinite"),
        pytest.param(sgd_call, "nesterov", id="sgd-nesterov"),
        pytest.param(sgd_call, "maximize", id="sgd-maximize"),
        pytest.param(sgd_call, "skip_if_nonfinite", id="sgd-skip_if_nonfinite"),
    ],
)
def test_functional_steps_refuse_non_bool_flags(fs, call, name, value):
    assert_untouched(fs.arrays(), call(fs, **{name: value}), TypeError, rf"^{name}:")


@pytest.mark.parametrize("call", [adagrad_call, sgd_call], ids=["adagrad", "sgd"])
@pytest.mark.parametrize("value, exc", BAD_THREADS)
def test_functional_steps_refuse_bad_num_threads(fs, call, value, exc):
    assert_untouched(fs.arrays(), call(fs, num_threads=value), exc, r"^num_threads:")


@pytest.mark.parametrize(
    "options", [{"nesterov": True, "dampening": 0.1}, {"nesterov": True, "momentum": 0.0}],
    ids=["with-dampening", "without-momentum"],
)
def test_sgd_step_refuses_bad_nesterov(fs, options):
    assert_untouched(fs.arrays(), sgd_call(fs, **options), ValueError, r"^nesterov:")


@pytest.mark.parametrize("call", [adagrad_call, sgd_call], ids=["adagrad", "sgd"])
@pytest.mark.parametrize(
    "make_bad, exc",
    [
        pytest.param(lambda fs: fs.grads[2].astype(np.float64), TypeError, id="float64-for-float32"),
        pytest.param(lambda fs: fs.grads[2].reshape(3, 4), ValueError, id="wrong-shape"),
        pytest.param(lambda fs: strided(fs.grads[2]), ValueError, id="non-contiguous"),
        pytest.param(lambda fs: fs.shifted(2), ValueError, id="partly-overlaps-its-param"),
        pytest.param(lambda fs: memoryview(fs.grads[2]), TypeError, id="memoryview"),
    ],
)
def test_functional_steps_refuse_a_bad_last_grad_before_writing(fs, call, make_bad, exc):
    grads = with_item(fs.grads, 2, make_bad(fs))
    assert_untouched(fs.arrays(), call(fs, grads=grads), exc, r"^grads\[2\]:")


def test_adagrad_step_refuses_a_grad_that_is_its_sums(fs):
    grads = with_item(fs.grads, 2, fs.sums[2])
    assert_untouched(fs.arrays(), adagrad_call(fs, grads=grads), ValueError, r"^grads\[2\]: shares memory")


def test_sgd_step_refuses_a_grad_that_is_its_momentum_buffer(fs):
    grads = with_item(fs.grads, 2, fs.buffers[2])
    assert_untouched(fs.arrays(), sgd_call(fs, grads=grads), ValueError, r"^grads\[2\]: shares memory")


@pytest.mark.parametrize("call", [adagrad_call, sgd_call], ids=["adagrad", "sgd"])
def test_functional_steps_refuse_grads_of_the_wrong_length(fs, call):
    assert_untouched(fs.arrays(), call(fs, grads=fs.grads[:2]), ValueError, r"^grads:")


def test_adagrad_step_refuses_sums_overlapping_a_param_behind_an_empty_view(rng):
    buf = random_array(rng, (100,), np.float32)
    params = [buf[:50], empty_view_at(buf, 40)]      # byte ranges [0,200), [160,160)
    sums = [buf[45:95], np.zeros(0, np.float32)]     # [180,380) overlaps params[0]
    grads = [random_array(rng, (50,), np.float32), np.zeros(0, np.float32)]
    call = lambda: cadagrad.adagrad_step(params, grads, sums, step=1)  # noqa: E731
    assert_untouched([buf, *grads], call, ValueError, r"sums\[0\]")


# ---------------------------------------------------------------------------------------------------
# Sparse steps (step_rows) on params[0], shape (4, 3) float32

BAD_ROWS = [
    pytest.param(lambda s: (np.array([0, 1, 4]), None, {}), ValueError, r"^indices\[2\]:",
                 id="index-past-end"),
    pytest.param(lambda s: (np.array([-1, 0]), None, {}), ValueError, r"^indices\[0\]:", id="negative-index"),
    pytest.param(lambda s: (np.array([2, 9]), None, {"assume_unique": True}), ValueError, r"^indices\[1\]:",
                 id="index-past-end-assume-unique"),
    pytest.param(lambda s: (np.array([0.0, 1.0]), None, {}), TypeError, r"^indices:", id="float-indices"),
    pytest.param(lambda s: (np.array([[0, 1]]), None, {}), ValueError, r"^indices:", id="2d-indices"),
    pytest.param(lambda s: ([0, 1], None, {}), TypeError, r"^indices:", id="list-indices"),
    pytest.param(lambda s: (np.array([0, 1]), lambda r: r.astype(np.float64), {}), TypeError, r"^rows:",
                 id="rows-wrong-dtype"),
    pytest.param(lambda s: (np.array([0, 1]), lambda r: r[:, :2], {}), ValueError, r"^rows:",
                 id="rows-wrong-width"),
    pytest.param(lambda s: (np.array([0, 1]), lambda r: r[:1], {}), ValueError, r"^rows:",
                 id="fewer-rows-than-indices"),
    pytest.param(lambda s: (np.array([0, 1]), lambda r: s.params[0][2:], {}), ValueError, r"^rows:",
                 id="rows-are-param-rows"),
    pytest.param(lambda s: (np.array([0, 1]), None, {"param": 3}), ValueError, r"^param:",
                 id="param-out-of-range"),
    pytest.param(lambda s: (np.array([0, 1]), None, {"param": "0"}), TypeError, r"^param:",
                 id="param-string"),
    pytest.param(lambda s: (np.array([0, 1]), None, {"param": 1}), ValueError, r"^params\[1\]:",
                 id="param-is-1d"),
]


@pytest.mark.parametrize("make, exc, match", BAD_ROWS)
def test_bad_sparse_step_is_refused_and_nothing_written(stateful_setup, rng, make, exc, match):
    s = stateful_setup
    indices, make_rows, options = make(s)
    rows = random_array(rng, (len(indices), 3), np.float32)
    if make_rows is not None:
        rows = make_rows(rows)
    s.extra.append(rows)
    assert_untouched(s.arrays(), lambda: s.opt.step_rows(indices, rows, **options), exc, match, [s.opt])


ENGINE_SGD_STEPS = [
    pytest.param(lambda engine, grad, indices, rows: engine.sgd(grad, 0.1, 0.0, 0.9, 0.0, False, False, 1),
                 id="dense"),
    pytest.param(lambda engine, grad, indices, rows: engine.sgd_rows(
        0, indices, rows, False, 0.1, 0.0, 0.9, 0.0, False, False, 1), id="rows"),
    pytest.param(lambda engine, grad, indices, rows: engine.sgd_rows(
        0, indices, rows, True, 0.1, 0.0, 0.9, 0.0, False, False, 1), id="rows-assume-unique"),
]


@pytest.mark.parametrize("isa", list(_kernels.available_variants()))
@pytest.mark.parametrize("steps", [0, 3], ids=["first-step", "later-step"])
@pytest.mark.parametrize("call", ENGINE_SGD_STEPS)
def test_engine_sgd_with_momentum_but_no_buffers_is_refused_dense_and_sparse(rng, isa, steps, call):
    # The engine below the validators: its dense and sparse SGD steps share one argument check, so a
    # sparse step refuses momentum without buffers as the dense step does, instead of writing the
    # momentum through a null pointer.
    param = random_array(rng, (4, 3), np.float32)
    engine = _kernels.available_variants()[isa].StepEngine([param], None, True, None, steps)
    grad = random_array(rng, (4, 3), np.float32)
    indices = np.array([0, 2])
    rows = random_array(rng, (2, 3), np.float32)
    step = lambda: call(engine, grad, indices, rows)  # noqa: E731
    assert_untouched([param, grad, indices, rows], step, ValueError, "^momentum needs momentum buffers")
    assert engine.steps == steps


# ---------------------------------------------------------------------------------------------------
# Well-defined edge cases that must work

ADAGRAD_OPTIONS = [
    pytest.param({"lr": 0.1}, id="plain"),
    pytest.param({"lr": 0.1, "weight_decay": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.2},
                 id="decays"),
    pytest.param({"lr": 0.1, "maximize": True, "eps_inside_sqrt": True}, id="maximize-eps-inside"),
]
SGD_OPTIONS = [
    pytest.param({"lr": 0.1}, id="plain"),
    pytest.param({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}, id="momentum"),
    pytest.param({"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}, id="nesterov-maximize"),
]
BOTH = [
    *(pytest.param(cadagrad.Adagrad, reference.Adagrad, o.values[0], id=f"Adagrad-{o.id}")
      for o in ADAGRAD_OPTIONS),
    *(pytest.param(cadagrad.SGD, reference.SGD, o.values[0], id=f"SGD-{o.id}") for o in SGD_OPTIONS),
]


def assert_matches_reference(opt, ref) -> None:
    assert opt.step_count == ref.step_count
    for p, q in zip(opt.params, ref.params):
        assert p.tobytes() == q.tobytes()
    ref_state = ref.sums if isinstance(ref, reference.Adagrad) else (ref.momentum_buffers or [])
    for a, b in zip(state_arrays(opt), ref_state, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("cls, ref_cls, options", BOTH)
def test_grad_that_is_its_own_param_matches_reference_bitwise(rng, cls, ref_cls, options):
    s = make_setup(rng)
    ref_params = [p.copy() for p in s.params]
    opt, ref = cls(s.params, **options), ref_cls(ref_params, **options)
    for _ in range(3):
        assert opt.step(s.params) is True            # each grad is its param: read, then overwritten
        ref.step(ref_params)
    assert_matches_reference(opt, ref)


@pytest.mark.parametrize("cls, ref_cls, options", BOTH)
def test_single_param_as_its_own_grad_matches_reference_bitwise(rng, cls, ref_cls, options):
    param = random_array(rng, (257,), np.float32)
    ref_param = param.copy()
    opt, ref = cls(param, **options), ref_cls(ref_param, **options)
    for _ in range(3):
        opt.step(param)
        ref.step(ref_param)
    assert_matches_reference(opt, ref)


def test_functional_steps_take_a_grad_that_is_its_param(rng):
    p = random_array(rng, (33,), np.float64)
    sums = np.abs(random_array(rng, (33,), np.float64))
    ref = reference.Adagrad(p.copy(), lr=0.1)
    ref.sums[0][...] = sums
    cadagrad.adagrad_step(p, p, sums, step=1, lr=0.1)
    ref.step(ref.params[0])
    assert p.tobytes() == ref.params[0].tobytes() and sums.tobytes() == ref.sums[0].tobytes()
    q = random_array(rng, (33,), np.float32)
    expected = q - np.float32(0.1) * q
    cadagrad.sgd_step(q, q, step=1, lr=0.1)
    assert q.tobytes() == expected.tobytes()


@pytest.mark.parametrize("cls, ref_cls, options", BOTH)
@pytest.mark.parametrize(
    "shapes", [[(0,)], [(3, 0)], [(0,), (3, 0), (5,)], [(), (4,)], [()]],
    ids=["empty-1d", "empty-3x0", "empties-beside-a-param", "0d-beside-a-param", "0d-alone"],
)
def test_empty_and_0d_params_step_like_the_reference(rng, cls, ref_cls, options, shapes):
    params = [random_array(rng, shape, np.float64) for shape in shapes]
    ref_params = [p.copy() for p in params]
    opt, ref = cls(params, **options), ref_cls(ref_params, **options)
    for _ in range(2):
        grads = random_grads(rng, params)
        assert opt.step(grads) is True
        ref.step(grads)
    assert_matches_reference(opt, ref)


@pytest.mark.parametrize("shape", [(0,), (3, 0), ()], ids=["empty-1d", "empty-3x0", "0d"])
def test_single_empty_or_0d_param_steps(rng, shape):
    for opt in (cadagrad.Adagrad(random_array(rng, shape, np.float32)),
                cadagrad.SGD(random_array(rng, shape, np.float32), lr=0.1, momentum=0.9)):
        assert opt.step(random_array(rng, shape, np.float32)) is True
        assert opt.step_count == 1


@pytest.mark.parametrize("shape", [(0,), (3, 0), ()], ids=["empty-1d", "empty-3x0", "0d"])
def test_functional_steps_on_empty_and_0d_arrays(rng, shape):
    p = random_array(rng, shape, np.float32)
    assert cadagrad.adagrad_step(p, random_array(rng, shape, np.float32), np.ones(shape, np.float32), step=1)
    grad, buffer = random_array(rng, shape, np.float32), np.ones(shape, np.float32)
    assert cadagrad.sgd_step(p, grad, buffer, step=2, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_read_only_grads_in_a_tuple_are_fine(rng, kind):
    s, twin = optimizer_and_twin(rng, kind)
    assert s.opt.step(tuple(read_only(g) for g in s.grads)) is True
    twin.step(list(s.grads))
    assert fingerprint(s.opt) == fingerprint(twin)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_one_grad_array_for_two_params_is_fine(rng, kind):
    params = [random_array(rng, (16,), np.float32) for _ in range(2)]
    twin_params = [p.copy() for p in params]
    opt, twin = OPTIMIZERS[kind](params), OPTIMIZERS[kind](twin_params)
    grad = random_array(rng, (16,), np.float32)
    opt.step([grad, grad])
    twin.step([grad.copy(), grad.copy()])
    assert fingerprint(opt) == fingerprint(twin)
