"""flat_arrays: params as views of one aligned buffer, stepped as a list or as one array alike."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bitwise_equal, random_array

import cadagrad
from cadagrad.buffers import flat_arrays


def test_views_tile_the_buffer_in_order_and_are_aligned():
    flat, views = flat_arrays([(3, 4), 5, (2, 0), (1, 1, 2)], np.float64, fill=1.5)
    assert [v.shape for v in views] == [(3, 4), (5,), (2, 0), (1, 1, 2)]
    assert flat.size == 12 + 5 + 0 + 2 and (flat == 1.5).all()
    assert flat.ctypes.data % 64 == 0
    views[1][:] = 7.0
    assert (flat[12:17] == 7.0).all()
    assert all(v.flags.c_contiguous and v.flags.writeable for v in views)


def test_stepping_the_views_or_the_flat_buffer_gives_the_same_bits(rng):
    shapes = [(100, 7), 33, (5, 5)]
    flat_p, views_p = flat_arrays(shapes, np.float32)
    flat_g, views_g = flat_arrays(shapes, np.float32)
    flat_p[:] = random_array(rng, flat_p.shape, np.float32)
    twin = flat_p.copy()
    by_views = cadagrad.Adagrad(views_p, lr=0.1)
    as_one = cadagrad.Adagrad(twin, lr=0.1)
    for _ in range(3):
        flat_g[:] = random_array(rng, flat_g.shape, np.float32)
        by_views.step(views_g)
        as_one.step(flat_g)
    assert_bitwise_equal(flat_p, twin)


def test_bad_dtype_and_shapes_are_refused():
    with pytest.raises(TypeError, match="dtype"):
        flat_arrays([3], np.int32)
    with pytest.raises(ValueError, match=r"shapes\[1\]"):
        flat_arrays([3, (2, -1)])
