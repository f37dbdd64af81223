"""``python -m cadagrad demo``: each experiment's numbers, the report, the CLI, and the figures."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

import cadagrad
from cadagrad import __main__ as cli
from cadagrad import demo, reference
from cadagrad.demo import experiments

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results() -> demo.DemoResults:
    return demo.run_experiments()


def quadratic_grad_by_hand(x: np.ndarray) -> np.ndarray:
    """The gradient of f(x) = 0.1 * x1**2 + 5 * x2**2, written out."""
    return np.array([0.2 * x[0], 10.0 * x[1]])


# 1. The quadratic -------------------------------------------------------------------------------------


def test_quadratic_sgd_path_equals_numpy_expression_bitwise(results):
    """``x = x - eta * g``: NumPy's order is the kernel's (p - lr*g), so every point agrees exactly."""
    for run in (results.quadratic.sgd, results.quadratic.sgd_zigzag):
        x = np.array([9.0, -3.0])
        expected = [x]
        for _ in range(results.quadratic.steps):
            x = x - run.lr * quadratic_grad_by_hand(x)
            expected.append(x)
        assert run.points.tobytes() == np.array(expected).tobytes(), run.label
        assert run.final_value == 0.1 * x[0] ** 2 + 5 * x[1] ** 2


def test_quadratic_adagrad_path_equals_textbook_expression_bitwise(results):
    """AdaGrad as usually written, ``G += g*g; x -= eta * g / sqrt(G + 1e-8)``, eps inside the root.

    NumPy evaluates ``eta * g / np.sqrt(...)`` left to right, as ``(eta * g) / sqrt(G + eps)``: the
    kernel's operation order, so the comparison is exact (bit for bit), rates included.
    """
    run = results.quadratic.adagrad
    eta, eps = 0.5, 1e-8
    x, G = np.array([9.0, -3.0]), np.zeros(2)
    points, rates = [x], []
    for _ in range(results.quadratic.steps):
        g = quadratic_grad_by_hand(x)
        G = G + g * g
        x = x - eta * g / np.sqrt(G + eps)
        points.append(x)
        rates.append(eta / np.sqrt(G + eps))
    assert run.points.tobytes() == np.array(points).tobytes()
    assert run.rates.tobytes() == np.array(rates).tobytes()
    assert run.final_value == 0.1 * x[0] ** 2 + 5 * x[1] ** 2


def test_quadratic_sgd_crawls_along_the_flat_axis_and_adagrad_gets_further(results):
    q = results.quadratic
    assert q.sgd.final[0] == pytest.approx(9.0 * 0.99**100, rel=1e-12)    # x1 shrinks by 0.99 a step
    assert q.adagrad.final_value < q.sgd.final_value
    # SGD at 0.05 never crosses the valley floor (factor 0.5); at 0.15 it zig-zags (factor -0.5).
    assert np.all(q.sgd.points[:20, 1] < 0)
    assert np.all(np.sign(q.sgd_zigzag.points[:20, 1])[1:] == -np.sign(q.sgd_zigzag.points[:20, 1])[:-1])
    # AdaGrad's first step moves both coordinates by ~lr, whatever their curvature.
    np.testing.assert_allclose(np.abs(q.adagrad.points[1] - q.adagrad.points[0]), [0.5, 0.5], rtol=1e-6)


# 2. The accumulator -----------------------------------------------------------------------------------


def test_accumulator_gives_the_steep_coordinate_the_smaller_rate(results):
    rates = results.quadratic.adagrad.rates
    assert np.all(rates[:, 1] < rates[:, 0])
    assert np.all(np.diff(rates, axis=0) <= 0)         # G only grows, so the rate only shrinks


def test_accumulator_table_agrees_with_the_hand_rounded_worked_example(results):
    """G and sqrt(G) exactly; the rates to one unit (1e-4) of the last digit of the worked example done by
    hand, which rounds sqrt(G) before dividing; step sizes as measured on the parameter."""
    table = results.table
    assert table.accumulators.tolist() == [100.0, 181.0, 302.0, 402.0, 502.0]
    assert table.roots.tobytes() == np.sqrt(table.accumulators).tobytes()
    assert table.rates.tobytes() == (0.1 / (np.sqrt(table.accumulators) + 1e-8)).tobytes()
    for step, printed in {0: 0.01, 1: 0.0075, 2: 0.0057, 4: 0.0045}.items():
        assert table.rates[step] == pytest.approx(printed, abs=1e-4), step
    np.testing.assert_allclose(table.step_sizes, table.rates * table.grads, rtol=1e-12)


# 3. Sparse gradients ----------------------------------------------------------------------------------


def test_sparse_gradients_rarer_updates_keep_a_higher_rate(results):
    runs = results.sparse.runs
    assert [r.p for r in runs] == [0.0, 0.5, 0.9]
    updates = [int(r.updates[-1]) for r in runs]
    assert updates[0] == 100 and updates[0] > updates[1] > updates[2] > 0
    finals = [r.final_rate for r in runs]
    assert finals[0] < finals[1] < finals[2]
    seen = np.all([r.updates > 0 for r in runs], axis=0)
    stacked = np.array([r.rates[seen] for r in runs])
    assert np.all(np.diff(stacked, axis=0) >= 0)       # at every step, the rarer x2 has the higher rate
    assert stacked[2].mean() > 1.2 * stacked[0].mean()


def test_sparse_gradients_rate_depends_only_on_updates_received(results):
    """A zero gradient leaves G and x2 untouched, so x2 after n updates is the same (bitwise) for every p."""
    dense = results.sparse.runs[0]
    for run in results.sparse.runs[1:]:
        received = np.diff(np.concatenate([[0], run.updates])) == 1
        n = run.updates[received]
        assert run.rates[received].tobytes() == dense.rates[n - 1].tobytes()
        assert run.x2[1:][received].tobytes() == dense.x2[n].tobytes()


# 4. Rare features -------------------------------------------------------------------------------------


def test_rare_feature_rate_ratio_within_tolerance_of_prediction(results):
    rare = results.rare
    assert rare.prediction == pytest.approx(2.0 / 1.0 * np.sqrt(0.005 / 0.2))
    assert abs(rare.relative_deviation) <= demo.RATE_RATIO_TOLERANCE, rare.measured_ratio
    # Without the per-example spread the learned weights stop feeding G, and the prediction fails.
    assert rare.noiseless_ratio[-1] > 2 * rare.prediction


def test_rare_feature_adagrad_learns_the_rare_weight_faster_than_sgd(results):
    rare = results.rare
    quarter = rare.steps // 4
    assert rare.adagrad_rms_error[quarter - 1, 1] < 0.6 * rare.sgd_rms_error[quarter - 1, 1]
    assert rare.adagrad_rms_error[-1, 1] < rare.sgd_rms_error[-1, 1]
    assert rare.adagrad_rms_error[-1, 0] < 0.2                # the frequent weight is learned by both
    assert rare.sgd_rms_error[-1, 0] < 0.2


def test_rare_feature_experiment_is_deterministic():
    a = demo.rare_features(steps=2000, replicas=4)
    b = demo.rare_features(steps=2000, replicas=4)
    assert a.final_ratios.tobytes() == b.final_ratios.tobytes()
    assert a.adagrad_rms_error.tobytes() == b.adagrad_rms_error.tobytes()


# 5. The limits ----------------------------------------------------------------------------------------


def test_rotation_leaves_sgd_unchanged_and_defeats_adagrad(results):
    rot = results.rotated
    np.testing.assert_allclose(np.linalg.eigvalsh(rot.hessian), [0.2, 10.0], rtol=1e-12)
    assert rot.rotated["sgd"].final_value == pytest.approx(rot.aligned["sgd"].final_value, rel=1e-9)
    assert rot.rotated["adagrad"].final_value > 5 * rot.aligned["adagrad"].final_value
    assert rot.rotated["adagrad"].final_value > rot.rotated["sgd"].final_value


def test_nonstationary_adagrad_stalls_after_large_early_gradients(results):
    ns = results.nonstationary
    start, end = ns.errors_at_switch, ns.final_errors
    assert start["carried"] == start["restarted"]
    assert end["carried"] > 0.5 * start["carried"]            # 300 steps barely moved it
    assert end["restarted"] < 0.01 * start["restarted"]       # a fresh accumulator converges
    assert ns.rates["carried"][-1] < ns.rates["restarted"][-1] / 10


# 6. l1 sparsity ---------------------------------------------------------------------------------------


def test_l1_sparsity_zero_fractions_grow_with_l1_for_the_proximal_rules(results):
    sp = results.sparsity
    assert sp.l1s[0] == 0 and list(sp.l1s) == sorted(sp.l1s)
    for name in ("ProximalAdagrad", "AdagradDA"):
        zeros = [r.zero_fraction for r in sp.curve(name)]
        assert zeros[0] == 0.0, name                          # without l1, no weight lands on 0
        assert np.all(np.diff(zeros) >= 0), (name, zeros)
        assert zeros[-1] > zeros[1] + 0.3, (name, zeros)
    assert sp.curve("AdagradDA")[-1].zero_fraction > 0.99


def test_l1_sparsity_adagrad_with_the_l1_subgradient_never_gives_exact_zeros(results):
    assert [r.zero_fraction for r in results.sparsity.curve("Adagrad")] == [0.0] * len(results.sparsity.l1s)


def test_l1_sparsity_dual_averaging_gives_the_most_zeros_at_every_positive_l1(results):
    sp = results.sparsity
    ada, prox, da = (sp.curve(name) for name in demo.SPARSITY_OPTIMIZERS)
    for i in range(1, len(sp.l1s)):
        assert da[i].zero_fraction > prox[i].zero_fraction > ada[i].zero_fraction, sp.l1s[i]
    # ... at a small cost: DA's best held-out loss is within 0.02 of Adagrad's, with most weights at 0.
    best_da, best_ada = min(da, key=lambda r: r.test_loss), min(ada, key=lambda r: r.test_loss)
    assert best_da.zero_fraction > 0.5
    assert best_da.test_loss < best_ada.test_loss + 0.02


def test_l1_sparsity_losses_are_finite_and_bounded_by_the_planted_and_the_zero_model(results):
    sp = results.sparsity
    assert 0.3 < sp.planted_test_loss < np.log(2)
    for r in sp.runs + sp.row_runs:
        assert np.isfinite(r.train_loss) and np.isfinite(r.test_loss), r
        assert sp.planted_test_loss < r.test_loss < np.log(2) + 0.01, r
        assert 0 <= r.informative_kept <= sp.informative
    ada, prox = sp.curve("Adagrad"), sp.curve("ProximalAdagrad")
    assert prox[0].test_loss == pytest.approx(ada[0].test_loss, rel=1e-3)     # the same rule at l1 = 0
    assert ada[-1].test_loss > ada[1].test_loss                                # a large l1 underfits


def test_l1_sparsity_row_steps_skip_the_penalty_of_inactive_features(results):
    sp = results.sparsity
    assert [r.rows for r in sp.row_runs] == [True] * len(sp.row_runs)
    rows_prox, prox = sp.curve("ProximalAdagrad", rows=True), sp.curve("ProximalAdagrad")
    rows_da, da = sp.curve("AdagradDA", rows=True), sp.curve("AdagradDA")
    for i in range(1, len(sp.l1s)):
        assert rows_prox[i].zero_fraction < prox[i].zero_fraction, sp.l1s[i]
        assert rows_da[i].zero_fraction == pytest.approx(da[i].zero_fraction, abs=0.01), sp.l1s[i]


def test_l1_sparsity_experiment_is_deterministic():
    options = {"l1s": (0.0, 1e-3), "train_size": 400, "test_size": 400, "epochs": 1}
    a, b = demo.l1_sparsity(**options), demo.l1_sparsity(**options)
    assert a == b


# Text, CLI and figures --------------------------------------------------------------------------------


def test_effective_rates_follow_the_eps_convention():
    w = np.zeros(2)
    outside = cadagrad.Adagrad(w, lr=0.1, eps=1e-3)
    outside.step(np.array([3.0, 0.0]))
    assert demo.effective_rates(outside).tolist() == [0.1 / (3.0 + 1e-3), 0.1 / 1e-3]
    inside = cadagrad.Adagrad(np.zeros(1), lr=0.1, eps=1e-3, eps_inside_sqrt=True)
    inside.step(np.array([3.0]))
    assert demo.effective_rates(inside).tolist() == [0.1 / np.sqrt(9.0 + 1e-3)]


@pytest.mark.parametrize("eps_inside_sqrt", [False, True])
def test_effective_rates_are_the_rate_of_the_step_just_taken(eps_inside_sqrt):
    """After a step, ``lr / d`` of the accumulator times the gradient is how far that step moved each element,
    for the compiled optimizer, whose accumulator is the reference's bit for bit."""
    rng = np.random.default_rng(0)
    options = {"lr": 0.3, "eps": 1e-3, "eps_inside_sqrt": eps_inside_sqrt}
    w, w_ref = np.zeros(16), np.zeros(16)
    opt, ref = cadagrad.Adagrad(w, **options), reference.Adagrad(w_ref, **options)
    for _ in range(5):
        g = rng.standard_normal(16)
        before = w.copy()
        opt.step(g)
        ref.step(g)
    assert opt.sums[0].tobytes() == ref.sums[0].tobytes()
    np.testing.assert_allclose(before - w, demo.effective_rates(opt) * g, rtol=1e-12, atol=1e-15)


def test_effective_rates_call_the_references_denominator(monkeypatch):
    """The demo holds no copy of AdaGrad's divisor: it asks cadagrad.reference for it."""
    calls = []

    def spy(sums, eps, eps_inside_sqrt=False):
        calls.append((eps, eps_inside_sqrt))
        return reference.adagrad_denominator(sums, eps, eps_inside_sqrt)

    monkeypatch.setattr(experiments, "adagrad_denominator", spy)
    opt = cadagrad.Adagrad(np.zeros(3), lr=0.1, eps=1e-6, eps_inside_sqrt=True)
    opt.step(np.ones(3))
    demo.effective_rates(opt)
    assert calls == [(1e-6, True)]


def test_report_names_every_experiment(results):
    text = demo.format_report(results)
    for heading in ("1. ", "2. ", "3. ", "4. ", "5. ", "6. "):
        assert f"\n{heading}" in "\n" + text
    assert "0.00743" in text and "502" in text           # the accumulator table
    assert "tolerance 10%" in text
    assert "AdagradDA" in text and "ProximalAdagrad" in text and "step_rows" in text


def test_cli_demo_no_plots_exits_zero(tmp_path):
    command = [sys.executable, "-m", "cadagrad", "demo", "--no-plots", "--out", str(tmp_path / "o")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1. f(x)")
    assert "Figures skipped" in proc.stdout
    assert not (tmp_path / "o").exists()


def test_cli_without_subcommand_prints_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "bench" in out


def test_cli_bench_passes_the_remaining_arguments(monkeypatch):
    bench = pytest.importorskip("cadagrad.bench")
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["bench", "--quick", "--threads", "1,2"]) == 7
    assert seen == [["--quick", "--threads", "1,2"]]


def test_demo_without_matplotlib_still_reports_and_says_how_to_get_figures(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib now raises ImportError
    text = demo.run_demo(tmp_path / "figs")
    assert "matplotlib is not installed" in text and "pip install 'cadagrad[demo]'" in text
    assert not (tmp_path / "figs").exists()
    assert capsys.readouterr().out == ""                      # library code never prints


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figure_file_names_are_the_documented_ones():
    """Documentation pages embed the figures by these names: changing one breaks them."""
    assert demo.FIGURE_NAMES == (
        "1_quadratic_paths.png",
        "2_accumulator.png",
        "3_sparse_gradients.png",
        "4_rare_features.png",
        "5_limits.png",
        "6_l1_sparsity.png",
    )


def test_run_demo_names_the_figures_it_wrote(monkeypatch, tmp_path):
    out = tmp_path / "figs"
    seen = []

    def fake_write_figures(out_dir, results):
        seen.append((out_dir, results))
        return [out_dir / name for name in demo.FIGURE_NAMES]

    monkeypatch.setattr(demo, "plots_available", lambda: True)
    monkeypatch.setattr(demo, "write_figures", fake_write_figures)
    text = demo.run_demo(out)
    assert seen and seen[0][0] == out and isinstance(seen[0][1], demo.DemoResults)
    assert text.endswith(f"Figures (6) written to {out}/: " + ", ".join(demo.FIGURE_NAMES))


def test_experiments_and_report_never_import_matplotlib():
    code = ("import sys\n"
            "from cadagrad import demo\n"
            "demo.run_demo(plots=False)\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_write_figures_without_matplotlib_raises_before_creating_anything(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError):
        demo.write_figures(tmp_path / "figs")
    assert not (tmp_path / "figs").exists()


def test_write_figures_writes_every_figure_as_a_valid_png(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    paths = demo.write_figures(out, results)
    assert paths == [out / name for name in demo.FIGURE_NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(demo.FIGURE_NAMES)
    for name in demo.FIGURE_NAMES:
        data = (out / name).read_bytes()
        width, height = _png_size(data)
        assert width >= 800 and height >= 400, name
        assert len(data) > 20_000, name
        assert data.endswith(b"IEND\xaeB`\x82"), name
