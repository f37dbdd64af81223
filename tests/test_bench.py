"""What ``python -m cadagrad bench`` prints around its numbers: progress per case, spreads, the marks on
ratios that noise makes unreliable or impossible, its sections; and the ceiling kernel it compares with.
No timing is asserted here (timing lives in bench/ and the bench command)."""

from __future__ import annotations

import io
import re

import ml_dtypes
import numpy as np
import pytest

from cadagrad import bench
from cadagrad.functional import memory_ceiling


def test_spread_is_the_interquartile_range_over_the_median():
    assert bench.spread([1.0, 1.0, 1.0, 1.0, 1.0]) == 0.0
    assert bench.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)
    assert bench.spread([7.0]) == 0.0


def test_a_ratio_is_of_medians_and_its_spread_is_of_the_per_round_ratios():
    samples = bench.Samples({"cadagrad": [1.0, 1.0, 2.0], "ceiling": [1.0, 2.0, 2.0]})
    ratio, ratio_spread = samples.ratio("ceiling", "cadagrad")
    assert ratio == 2.0                          # median 2.0 over median 1.0
    assert ratio_spread == pytest.approx(0.5)    # rounds 1, 2, 1: quartiles 1 and 1.5, median 1
    assert samples.ratio("reference", "cadagrad") is None


def test_marks_flag_impossible_and_unreliable_ratios_and_explain_them():
    marks = bench.Marks()
    assert marks.cell("a", "ceiling", (0.95, 0.01), above=1.0) == "0.95"
    assert marks.cell("a", "ceiling", (1.004, 0.01), above=1.0) == "1.00"     # 1.00 as printed: fine
    assert marks.notes() == []
    assert marks.cell("b", "ceiling", (1.23, 0.01), above=1.0) == "1.23!"
    assert marks.cell("b", "check", (0.80, 0.01), below=1.0) == "0.80!"
    assert marks.cell("c", "x ref", (7.5, 0.5)) == "7.50~"
    assert marks.cell("c", "x fused", None) == "-"
    notes = "\n".join(marks.notes())
    assert "~ unreliable (1 cells)" in notes and "! impossible without noise (2 cells)" in notes
    assert "warning:" in notes


def test_run_prints_one_progress_line_per_case_and_returns_each_section_in_order():
    def section(name, labels):
        return bench.Section(
            name, f"{name} help",
            cases=lambda s: [type("C", (), {"label": label})() for label in labels],
            measure=lambda case, s: case.label.upper(),
            report=lambda results, s: f"{name}: {' '.join(results)}",
        )

    settings = bench.Settings(quick=True, threads=[1], repeats=1, with_reference=False, many_tensors=False)
    progress = io.StringIO()
    reports = bench.run([section("one", ["a", "b"]), section("two", ["c"])], settings, progress=progress)
    assert reports == ["one: A B", "two: C"]
    lines = progress.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"\[1/3\] one: a: \d+\.\d s \(\d+ s so far\)", lines[0])
    assert lines[2].startswith("[3/3] two: c: ")


def test_sections_have_unique_names_and_unknown_ones_are_refused(capsys):
    names = [s.name for s in bench.SECTIONS]
    assert len(names) == len(set(names)) and {"dense", "sparse"} <= set(names)
    with pytest.raises(SystemExit):
        bench.main(["--sections", "dense,nonsense"])
    assert "unknown nonsense" in capsys.readouterr().err


def test_quick_sizes_stay_small():
    settings = bench.Settings(quick=True, threads=[1], repeats=1, with_reference=True, many_tensors=True)
    assert max(c.size * c.tensors for c in bench.DENSE.cases(settings)) <= 1 << 22
    assert [c.nrows for c in bench.SPARSE.cases(settings)] == [10**6]


def test_memory_ceiling_moves_the_bytes_of_a_step_with_an_addition():
    p, s = np.zeros(5), np.zeros(5)
    g = np.arange(5.0)
    run = memory_ceiling(p, s)
    run(g)
    run(g)
    np.testing.assert_array_equal(p, 2 * g)
    np.testing.assert_array_equal(s, 2 * g * g)
    params = [np.zeros(3, dtype=np.float32), np.zeros(2)]
    memory_ceiling(params)([np.ones(3, dtype=np.float32), np.ones(2)])
    assert params[0].tolist() == [1.0, 1.0, 1.0] and params[1].tolist() == [1.0, 1.0]


def test_memory_ceiling_refuses_grads_that_do_not_fit():
    p = np.zeros(5)
    run = memory_ceiling(p)
    with pytest.raises(ValueError, match=r"^grads: expected shape \(5,\) \(as params\), got \(4,\)$"):
        run(np.ones(4))
    assert not p.any()


def test_the_proximal_section_times_both_optimizers_small_when_quick():
    settings = bench.Settings(quick=True, threads=[1, 2], repeats=1, with_reference=False, many_tensors=False)
    cases = bench.PROXIMAL.cases(settings)
    assert {c.algorithm for c in cases} == {"proximal adagrad", "adagrad da"}
    assert {c.threads for c in cases} == {1, 2} and max(c.size for c in cases) <= 1 << 22
    full = bench.Settings(quick=False, threads=[1], repeats=1, with_reference=False, many_tensors=False)
    assert {c.size for c in bench.PROXIMAL.cases(full)} == {1 << 24}
    assert set(bench.proximal_implementations(bench.ProximalCase("adagrad da", 1000, 1))) == {
        "cadagrad", "adagrad", "ceiling",
    }


def test_memory_ceiling_with_two_states_moves_the_bytes_of_a_dual_averaging_step():
    p, s, s2 = np.full(5, np.nan), np.zeros(5), np.zeros(5)
    g = np.arange(5.0)
    run = memory_ceiling(p, s, states2=s2)
    run(g)
    run(g)
    np.testing.assert_array_equal(s2, 2 * g)
    np.testing.assert_array_equal(s, 2 * g * g)
    np.testing.assert_array_equal(p, 2 * g)          # written from the sum, never read
    with pytest.raises(ValueError, match="^states2: needs states"):
        memory_ceiling(p, states2=s2)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_memory_ceiling_of_a_16_bit_param_widens_adds_and_rounds_back(dtype):
    p, s = np.full(100, 1.0, dtype), np.zeros(100, np.float32)
    g = np.full(100, 0.5, dtype)
    run = memory_ceiling(p, s)
    run(g)
    run(g.astype(np.float32))                  # a float32 grad, as for the steps
    assert (p.astype(np.float32) == 2.0).all() and (s == 0.5).all()
    narrow = np.zeros(100, dtype)                 # a 16-bit state (state_dtype="param") is widened too
    memory_ceiling(p, narrow)(g)
    assert (p.astype(np.float32) == 2.5).all() and (narrow.astype(np.float32) == 0.25).all()
    with pytest.raises(TypeError, match=r"\(as params\) or float32, got float64"):
        memory_ceiling(p, np.zeros(100, np.float64))
    with pytest.raises(TypeError, match="states2"):
        memory_ceiling(p, s, states2=np.zeros(100, np.float32))


def test_16_bit_dense_cases_count_their_bytes_and_time_a_float32_step_beside_them():
    quick = bench.Settings(quick=True, threads=[1], repeats=1, with_reference=False, many_tensors=False)
    half = [c for c in bench.DENSE.cases(quick) if c.dtype.itemsize == 2]
    assert {(c.algorithm, c.dtype.name, c.size) for c in half} == {
        (algorithm, dtype, bench.QUICK_SIZES[-1])
        for algorithm in ("adagrad", "adagrad/param") for dtype in ("float16", "bfloat16")
    }
    case = bench.Case("adagrad", np.dtype(ml_dtypes.bfloat16), 1, 1000, 1)
    assert case.bytes_per_element() == 14        # p, g: 2 bytes; float32 state; p and state written
    assert bench.Case("sgd", np.dtype(np.float16), 1, 1000, 1).bytes_per_element() == 6
    assert bench.Case("adagrad", np.dtype(np.float32), 1, 1000, 1).bytes_per_element() == 20
    assert bench.Case("adagrad/param", np.dtype(np.float16), 1, 1000, 1).bytes_per_element() == 10
    assert bench.Case("adagrad/sr", np.dtype(np.float16), 1, 1000, 1).bytes_per_element() == 14
    steps = bench.implementations(case, with_reference=False)
    assert {"cadagrad", "ceiling", "float32"} <= set(steps)
    for step in steps.values():
        step()
    result = bench.Result(case, bench.interleave(steps, repeats=1))
    row = bench.format_row(result, bench.Marks())
    assert row[bench.COLUMNS.index("B/elem")] == "14" and row[bench.COLUMNS.index("t/f32")] != "-"


@pytest.mark.parametrize("algorithm", ["adagrad/param", "adagrad/sr"])
def test_16_bit_mode_cases_time_their_mode_and_compare_torch_only_like_with_like(algorithm):
    case = bench.Case(algorithm, np.dtype(ml_dtypes.bfloat16), 1, 1000, 1)
    steps = bench.implementations(case, with_reference=True)
    for step in steps.values():
        step()
    assert {"cadagrad", "ceiling", "float32", "reference"} <= set(steps)
    # torch keeps a 16-bit param's state in its dtype: the "param" mode is its like, rounding is not
    has_torch = bench._torch() is not None
    assert ("torch fused" in steps) == (has_torch and algorithm == "adagrad/param")
