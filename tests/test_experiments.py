"""The seven claims about Adagrad (conf/experiment/), each pinned by its direction with a margin,
and the exact reparameterisation statements to ~1e-12 in float64.

The grids here are narrowed around each optimizer's best rate of the experiment's own grid
(measured with the experiment's command, README "What the experiments show") so the suite
stays fast; the full experiments run in the slow test at the bottom.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nlp_adagrad import objectives
from nlp_adagrad.optim import SGD, Adagrad, FullMatrixAdagrad
from nlp_adagrad.recipes.analytic import canyon, nonstationary, saddle, sparse_features
from tests.helpers import make_config, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _best(run, grid, *overrides):
    cfg = make_config("task=analytic", *overrides)
    traces = [run(cfg, lr) for lr in grid]
    return min(traces, key=lambda t: t.score)


def _steps(trace) -> int:
    assert trace.results["result/finished"] == 1.0, trace.results
    return int(trace.results["result/steps"])


# ----------------------------------------------------------------------------- 1. the canyon
def test_adagrad_steps_do_not_grow_with_the_condition_number_and_sgds_do():
    adagrad_grid = [1.0, 2.15, 4.64, 10.0]
    sgd_grid = [0.000464, 0.001, 0.00215, 0.00464, 0.01, 0.0215, 0.0464]
    adagrad = {
        c: _steps(_best(canyon, adagrad_grid, f"task.condition={c}", "task.steps=20000"))
        for c in (1, 1000)
    }
    sgd = {
        c: _steps(_best(canyon, sgd_grid, "optim=sgd", f"task.condition={c}", "task.steps=20000"))
        for c in (100, 1000)
    }
    assert adagrad[1000] <= 2 * adagrad[1]  # measured 6 and 6 with the full grid
    assert sgd[1000] >= 5 * sgd[100]  # ~linear: measured 643 and 6,453


# --------------------------------------------------------------------- 2. the rotated canyon
def test_rotation_costs_diagonal_adagrad_its_advantage_but_not_full_matrix_adagrad():
    settings = ("task.condition=1000", "task.steps=20000")
    aligned = _steps(_best(canyon, [2.15, 4.64, 10.0], *settings))
    rotated = _steps(_best(canyon, [0.1, 0.215, 0.464], *settings, "task.angle=45"))
    sgd = _steps(_best(canyon, [0.001, 0.00215], "optim=sgd", *settings, "task.angle=45"))
    full = [
        _steps(_best(canyon, [0.464, 1.0, 2.15], "optim=full_matrix_adagrad", *settings, a))
        for a in ("task.angle=0", "task.angle=45")
    ]
    assert rotated >= 50 * aligned  # measured 5,094 vs 6
    assert rotated >= 0.5 * sgd  # no better than tuned SGD (6,617)
    assert max(full) <= 20 and max(full) <= 2 * min(full)  # measured 10 and 9


# ----------------------------------------------------------------- 3. reparameterisation
def _trajectory(optimizer_class, steps=40, loss_scale=1.0, linear=None, hessian=None, **kwargs):
    """theta over `steps` steps on c * f(A z), the optimizer stepping z (A = identity when
    `linear` is None); f the condition-10 canyon from (0.9, 0.6)."""
    hessian = objectives.canyon_hessian(10.0) if hessian is None else hessian
    a = torch.eye(2, dtype=torch.float64) if linear is None else linear
    z = torch.nn.Parameter(torch.linalg.solve(a, torch.tensor([0.9, 0.6], dtype=torch.float64)))
    optimizer = optimizer_class([z], **kwargs)
    path = []
    for _ in range(steps):
        theta = a @ z.detach()
        path.append(theta)
        # d/dz c f(A z) = c A^T H A z
        z.grad = loss_scale * a.T @ objectives.quadratic_gradient(theta, hessian)
        optimizer.step()
    return torch.stack(path)


def _newton_trajectory(linear, hessian, steps=5, damping=0.5):
    a = linear
    z = torch.linalg.solve(a, torch.tensor([0.9, 0.6], dtype=torch.float64))
    path = []
    for _ in range(steps):
        theta = a @ z
        path.append(theta)
        gradient = a.T @ objectives.quadratic_gradient(theta, hessian)
        z = z - damping * objectives.newton_step(gradient, a.T @ hessian @ a)
    return torch.stack(path)


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("b", [0.1, 10.0, -3.0])
def test_adagrad_on_a_scaled_parameter_is_adagrad_with_lr_times_b_and_eps_over_b(b):
    lr, eps = 0.05, 1e-3
    scaled = _trajectory(Adagrad, linear=b * torch.eye(2, dtype=torch.float64), lr=lr, eps=eps)
    direct = _trajectory(Adagrad, lr=lr * abs(b), eps=eps / abs(b))
    assert _gap(scaled, direct) < 1e-12
    assert _gap(scaled, _trajectory(Adagrad, lr=lr, eps=eps)) > 0.1  # and the scale matters


def test_a_diagonal_map_gives_each_coordinate_its_own_adagrad_rate():
    # theta_i = d_i z_i: Adagrad on z is Adagrad on theta with lr d_i per coordinate, which
    # the same map applied to lr shows: run each coordinate's problem alone (it is separable)
    d = torch.tensor([0.2, 5.0], dtype=torch.float64)
    lr, eps = 0.05, 0.0
    mapped = _trajectory(Adagrad, linear=torch.diag(d), lr=lr, eps=eps)
    for i in range(2):
        alone = _trajectory(Adagrad, lr=lr * float(d[i]), eps=eps)
        assert _gap(mapped[:, i], alone[:, i]) < 1e-12


def test_sgd_on_a_scaled_parameter_is_sgd_with_lr_times_b_squared():
    b = 3.0
    scaled = _trajectory(SGD, linear=b * torch.eye(2, dtype=torch.float64), lr=0.002)
    assert _gap(scaled, _trajectory(SGD, lr=0.002 * b**2)) < 1e-12
    assert _gap(scaled, _trajectory(SGD, lr=0.002)) > 0.1


def test_adagrad_ignores_a_scaled_loss_exactly_when_eps_scales_too_and_sgd_does_not():
    c, lr = 100.0, 0.05
    base = _trajectory(Adagrad, lr=lr, eps=1e-3)
    assert _gap(_trajectory(Adagrad, loss_scale=c, lr=lr, eps=1e-3 * c), base) < 1e-12
    assert _gap(_trajectory(Adagrad, loss_scale=c, lr=lr, eps=1e-3), base) > 1e-6  # eps fixed
    assert _gap(_trajectory(SGD, loss_scale=c, lr=0.002), _trajectory(SGD, lr=0.002)) > 0.1


def test_rotations_move_diagonal_adagrad_but_not_sgd_or_full_matrix_adagrad():
    r = objectives.rotation(30.0)
    hessian = objectives.canyon_hessian(10.0)
    for optimizer, kwargs, invariant in (
        (SGD, dict(lr=0.05), True),
        (FullMatrixAdagrad, dict(lr=0.05, eps=0.0), True),
        (Adagrad, dict(lr=0.05, eps=0.0), False),
    ):
        # theta = R z on f(theta): the same problem in rotated coordinates
        rotated = _trajectory(optimizer, linear=r, hessian=hessian, **kwargs)
        plain = _trajectory(optimizer, hessian=hessian, **kwargs)
        gap = _gap(rotated, plain)
        assert (gap < 1e-10) if invariant else (gap > 0.1), (optimizer.__name__, gap)


def test_only_newton_is_invariant_to_a_general_linear_map():
    a = torch.tensor([[3.0, 1.0], [0.0, 0.3]], dtype=torch.float64)  # not orthogonal
    hessian = objectives.canyon_hessian(10.0)
    identity = torch.eye(2, dtype=torch.float64)
    newton_gap = _gap(_newton_trajectory(a, hessian), _newton_trajectory(identity, hessian))
    assert newton_gap < 1e-12
    full = _trajectory(FullMatrixAdagrad, linear=a, lr=0.05, eps=0.0)
    assert _gap(full, _trajectory(FullMatrixAdagrad, lr=0.05, eps=0.0)) > 0.1


# ------------------------------------------------------------------------------- 4. saddle
def test_fresh_adagrad_escapes_the_saddle_fast_and_adagrad_with_history_crawls():
    setting = ("task.problem=saddle", "task.start=[1.0,1e-6]", "task.steps=50000")

    def steps(*overrides):
        return _steps(_best(saddle, [0.05], *setting, *overrides))

    fresh, history = steps(), steps("task.history=100")
    sgd, rmsprop = steps("optim=sgd"), steps("optim=rmsprop", "task.history=100")
    rowwise = steps("optim=rowwise_adagrad")
    assert history >= 20 * fresh  # measured 1,428 vs 18
    assert rowwise >= 20 * fresh  # one accumulator for the row: x's gradient fills it (780)
    assert rmsprop <= 2 * fresh  # RMSprop forgets its history (4)
    expected = math.log(objectives.ESCAPE / 1e-6) / math.log(1.05)  # y grows ~(1 + lr) a step
    assert 0.8 * expected <= sgd <= 1.2 * expected  # measured 272 vs 269


# ------------------------------------------------------------------------ 5. non-stationary
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rmsprop_recovers_after_the_gradients_shrink_and_adagrad_does_not(seed):
    setting = ("task.problem=nonstationary", "task.steps=1000", f"trainer.seed={seed}")
    adagrad = _best(nonstationary, [0.0464, 0.1, 0.215, 0.464], *setting)
    rmsprop = _best(nonstationary, [0.00215, 0.00464, 0.01], "optim=rmsprop", *setting)
    after = "result/excess_after_shift"
    assert rmsprop.results[after] * 3 <= adagrad.results[after]
    # Adagrad's rate stays put after the shift; RMSprop's climbs back
    a, r = adagrad.results, rmsprop.results
    assert a["result/eff_lr_at_end"] <= 1.05 * a["result/eff_lr_at_shift"]
    assert r["result/eff_lr_at_end"] >= 5 * r["result/eff_lr_at_shift"]


# --------------------------------------------------------------------- 6. sparse features
def test_adagrad_beats_tuned_sgd_on_sparse_features_most_where_rare_features_decide():
    # 1,000 steps here (the experiment: 2,000); measured gaps (rare-, common-dominated):
    # seed 0 +.065 / +.030, seed 1 +.055 / +.020
    setting = ("task.problem=sparse_features", "task.dim=1000", "task.examples=8000")
    for seed in (0, 1):
        s = (*setting, "task.steps=1000", f"trainer.seed={seed}")
        a = _best(sparse_features, [0.215, 0.464, 1.0], *s).results
        g = _best(sparse_features, [0.464, 1.0, 2.15], "optim=sgd", *s).results
        assert a["test/accuracy"] > g["test/accuracy"]
        rare_gap = a["test/accuracy_rare_dominated"] - g["test/accuracy_rare_dominated"]
        common_gap = a["test/accuracy_common_dominated"] - g["test/accuracy_common_dominated"]
        assert rare_gap > common_gap > -0.01
        assert a["eff_lr/rare"] > 2 * a["eff_lr/common"]  # rare features keep larger rates


# ----------------------------------------------------------------------- 7. text replay
def test_the_minus_half_slope_holds_for_batch_one_binary_and_steepens_from_there(tmp_path):
    from nlp_adagrad.data import load_corpus
    from nlp_adagrad.fits import binned_fit
    from nlp_adagrad.replay import replay_accumulators
    from nlp_adagrad.token_cache import tokenize_corpus

    cfg = make_config("+experiment=text_slope")
    corpus = load_corpus(cfg.data)
    split = tokenize_corpus(corpus, cfg.tokenizer).train

    def slope(batch_size, weighting):
        G, updates = replay_accumulators(split, 5, batch_size, 5, 0, weighting)
        with np.errstate(divide="ignore"):
            return binned_fit(updates, np.where(G > 0, G**-0.5, np.nan)).slope

    exact = slope(1, "binary")
    assert abs(exact + 0.5) < 1e-9  # every update adds the same square: -1/2 exactly
    assert slope(32, "binary") < exact - 0.05  # batches sum a token over documents (-0.62)
    assert slope(1, "mean") < exact - 0.05  # count-weighted rows (-0.64)
    assert slope(32, "mean") < min(slope(32, "binary"), slope(1, "mean"))  # both (-0.75)


# ----------------------------------------------------------------- the commands and report
@pytest.mark.slow
def test_an_experiment_sweep_and_its_report_from_the_command_line(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "+experiment=rotated_canyon",
        "optim=adagrad,full_matrix_adagrad",
        "task.angle=0,45",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = run_cli_report(sweep, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert report.returncode == 0 and html.count("<img src='data:image/png;base64,") == 2
    assert "| adagrad | 45.0 | 1 |" in (tmp_path / "report" / "report.md").read_text()


def run_cli_report(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.report", str(args[0]), "-o", str(args[1])],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_report_page_holds_each_experiments_table_and_figures(tmp_path):
    from nlp_adagrad.report import main as report

    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "+experiment=canyon",
        "optim=adagrad,sgd",
        "task.condition=10",
        "task.steps=300",
        "task.lr_grid=[0.01,0.1]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "report"
    assert report([str(sweep), "-o", str(out)]) == 0
    page, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert page.count("<img src='data:image/png;base64,") == 2  # opens from disk, no files
    assert "python -m nlp_adagrad.train -m +experiment=canyon" in page  # how to reproduce
    (job,) = [d for d in sweep.iterdir() if "optim=adagrad" in d.name]
    metrics = json.loads((job / "metrics.json").read_text())
    row = f"| adagrad | 1 | {metrics['train/lr']:.3g} | 1 | {metrics['result/steps']:.0f} |"
    assert row in markdown  # the group, its seeds, then its numbers as metrics.json has them
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["01_canyon_1.png", "01_canyon_2.png"]
    assert all(f"figures/{name}" in markdown for name in figures)


def test_the_report_refuses_a_missing_or_empty_folder_in_one_line(tmp_path, capsys):
    from nlp_adagrad.report import main as report

    assert report([str(tmp_path / "nowhere")]) == 2
    assert report([str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "out").exists()
