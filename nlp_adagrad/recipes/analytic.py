"""`task=analytic`: the experiments' small objectives (nlp_adagrad.objectives) trained by any
optimizer of the family, in float64, every step recorded.

With `task.lr_grid` each rate of the grid is a full run and the best one is reported (canyon:
fewest steps to `task.tol`; saddle: fewest steps to escape; nonstationary: lowest excess loss
before the shift, the rate a user tuned on the data they had; sparse_features: lowest
validation loss), with every rate's score in metrics.json
(`tuning/lr=<lr>`). Outputs: metrics.json, trajectory.csv (a row per step: loss, position or
excess loss, effective rates) and the same curves in TensorBoard. `problem=text_replay` is
the replay of Adagrad's accumulators through BBC News batches (nlp_adagrad.replay).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nlp_adagrad import objectives
from nlp_adagrad.batching import gather_documents
from nlp_adagrad.config import Config
from nlp_adagrad.errors import UserError
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.run import open_writer, start
from nlp_adagrad.run_dir import write_json
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")

TWO_D = ("canyon", "saddle")
NO_CAP = 2**62
SPARSE_BATCH = 16  # sparse_features: examples per step


@dataclass
class Trace:
    """One run at one learning rate: a row per step, the run's results and its tuning score
    (lower is better)."""

    lr: float
    columns: list[str]
    rows: list[list[float]] = field(default_factory=list)
    results: dict[str, float] = field(default_factory=dict)
    score: float = math.inf


def analytic(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Run the problem at each rate of the grid; write the best run's files; return metrics."""
    start(cfg, telemetry=False)
    task = cfg.task
    if task.problem == "text_replay":
        from nlp_adagrad.replay import text_replay

        return text_replay(cfg, run_dir, writer)
    refuse_ignored_groups(cfg)
    run = {"canyon": canyon, "saddle": saddle, "nonstationary": nonstationary}.get(
        task.problem, sparse_features
    )
    traces = []
    # largest rates first: on the 2-D problems the fast ones finish early, and a later rate
    # still unfinished at the best count so far stops there (it cannot win)
    for lr in sorted(task.lr_grid or [cfg.optim.lr], reverse=True):
        if task.problem in TWO_D:
            done = [int(t.results["result/steps"]) for t in traces if t.results["result/finished"]]
            traces.append(run(cfg, lr, min(done, default=NO_CAP)))
        else:
            traces.append(run(cfg, lr))
    best = min(traces, key=lambda t: (t.score, t.lr))
    metrics = {
        "train/lr": best.lr,
        "train/steps": float(task.steps),
        **best.results,
        **{f"tuning/lr={t.lr:g}": t.score for t in sorted(traces, key=lambda t: t.lr)},
    }
    write_trace(run_dir, best, writer or open_writer(cfg, run_dir, True))
    write_json(run_dir / "metrics.json", metrics)
    log.info(
        "%s with %s: best lr %g of %d; %s",
        task.problem,
        cfg.optim.name,
        best.lr,
        len(traces),
        ", ".join(f"{k} {v:.4g}" for k, v in best.results.items()),
    )
    return metrics


def refuse_ignored_groups(cfg: Config) -> None:
    """The analytic problems bring their own data and model: an override of either would be
    silently ignored, so it is refused."""
    if cfg.data.name != "bbc_news" or cfg.model.name != "logreg":
        raise UserError(
            f"task.problem={cfg.task.problem} has its own data and parameters: drop the data= "
            f"and model= overrides (the problem's keys are task.*)"
        )


# ------------------------------------------------------------------------------- the problems
def _optimizer(cfg: Config, lr: float, params: list[torch.Tensor]):
    return build_optimizer(dataclasses.replace(cfg.optim, lr=lr), params, cfg.task.steps)


def _descend_2d(
    cfg: Config, lr: float, f, gradient, done, z: torch.nn.Parameter, optimizer, cap: int
) -> Trace:
    """Steps of `optimizer` on f(scale * z) (its gradient in closed form: scale * f'(theta))
    until `done(theta, f)`, task.steps, or `cap` steps, where an earlier rate of the grid had
    finished (this one can no longer win); a row per step: step, f, x, y, and the two
    coordinates' effective rates (in z)."""
    task = cfg.task
    noise = torch.Generator().manual_seed(cfg.trainer.seed)
    trace = Trace(lr, ["step", "loss", "x", "y", "eff_lr_x", "eff_lr_y"])
    finished_at = None
    for step in range(min(task.steps, cap) + 1):
        theta = task.scale * z.detach()
        loss = f(theta)
        rates = optimizer.effective_lr_coords(z).reshape(-1).tolist() if step else [math.nan] * 2
        trace.rows.append([step, float(loss), *theta.reshape(-1).tolist(), *rates])
        if not math.isfinite(float(loss)):
            break
        if done(theta, float(loss)):
            finished_at = step
            break
        if step == min(task.steps, cap):
            break
        z.grad = task.scale * gradient(theta)
        if task.noise:
            z.grad.add_(torch.randn(z.shape, generator=noise, dtype=z.dtype), alpha=task.noise)
        optimizer.step()
    final = trace.rows[-1][1]
    trace.results = {
        "result/finished": float(finished_at is not None),
        "result/steps": float(finished_at if finished_at is not None else len(trace.rows) - 1),
        "result/final_loss": final,
    }
    # unfinished runs rank after every finished one, closer ones first
    trace.score = (
        float(finished_at)
        if finished_at is not None
        else task.steps
        * (2 + (math.log10(max(final, 1e-300) / task.tol) if math.isfinite(final) else 1e6))
    )
    return trace


def _point(cfg: Config) -> torch.nn.Parameter:
    """z = start / scale as one row (1, 2), float64: row-wise Adagrad shares one accumulator."""
    start_theta = torch.tensor([cfg.task.start], dtype=torch.float64)
    return torch.nn.Parameter(start_theta / cfg.task.scale)


def canyon(cfg: Config, lr: float, cap: int = NO_CAP) -> Trace:
    """f = 1/2 theta^T H theta until f < tol."""
    hessian = objectives.canyon_hessian(cfg.task.condition, cfg.task.angle)
    z = _point(cfg)
    return _descend_2d(
        cfg,
        lr,
        lambda t: objectives.quadratic(t, hessian),
        lambda t: objectives.quadratic_gradient(t, hessian),
        lambda t, f: f < cfg.task.tol,
        z,
        _optimizer(cfg, lr, [z]),
        cap,
    )


def saddle(cfg: Config, lr: float, cap: int = NO_CAP) -> Trace:
    """From near the saddle until |y| >= 0.5; with task.history, first that many steps on an
    earlier objective (the optimizer's state kept, the position reset)."""
    z = _point(cfg)
    optimizer = _optimizer(cfg, lr, [z])
    start_theta = z.detach().clone() * cfg.task.scale
    for _ in range(cfg.task.history):
        optimizer.zero_grad()
        objectives.history_bowl(cfg.task.scale * z, start_theta).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        z.copy_(start_theta / cfg.task.scale)
    trace = _descend_2d(
        cfg,
        lr,
        objectives.saddle,
        objectives.saddle_gradient,
        lambda t, f: abs(float(t.reshape(-1)[1])) >= objectives.ESCAPE,
        z,
        optimizer,
        cap,
    )
    trace.results["result/history_steps"] = float(cfg.task.history)
    return trace


def nonstationary(cfg: Config, lr: float) -> Trace:
    """Least squares with features 10x smaller and a new optimum from halfway."""
    task, seed = cfg.task, cfg.trainer.seed
    problem = objectives.ShiftingRegression.draw(task.dim, task.steps, seed)
    w = torch.nn.Parameter(torch.zeros(1, task.dim, dtype=torch.float64))
    optimizer = _optimizer(cfg, lr, [w])
    trace = Trace(lr, ["step", "loss", "excess_loss", "eff_lr"])
    for step in range(task.steps):
        x, y = problem.batch_at(step, seed)
        loss = 0.5 * ((x @ w.reshape(-1) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rate = float(np.nanmean(optimizer.effective_lr_coords(w).numpy()))
        trace.rows.append([step + 1, loss.item(), problem.excess_loss(w.detach(), step), rate])
    excess = np.array([r[2] for r in trace.rows])
    rates = np.array([r[3] for r in trace.rows])
    half, tail = task.steps // 2, max(task.steps // 20, 1)
    trace.results = {
        "result/excess_before_shift": float(excess[half - tail : half].mean()),
        "result/excess_after_shift": float(excess[-tail:].mean()),
        "result/eff_lr_at_shift": float(rates[half - 1]),
        "result/eff_lr_at_end": float(rates[-1]),
    }
    # the rate a user would have picked on the data before the shift
    before = trace.results["result/excess_before_shift"]
    trace.score = before if math.isfinite(before) else math.inf
    return trace


def sparse_features(cfg: Config, lr: float) -> Trace:
    """Logistic regression on a sparse table (one weight per feature) plus a dense bias;
    batches of SPARSE_BATCH examples in a seeded order, task.steps steps."""
    task, seed = cfg.task, cfg.trainer.seed
    data = objectives.SparseFeatures.draw(task.dim, task.examples, seed)
    table = torch.nn.EmbeddingBag(task.dim, 1, mode="sum", sparse=True).double()
    torch.nn.init.zeros_(table.weight)
    bias = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = _optimizer(cfg, lr, [table.weight, bias])
    train = data.splits["train"]
    rng = np.random.default_rng([seed, 17])
    epochs = task.steps * SPARSE_BATCH // task.examples + 1
    order = np.concatenate([rng.permutation(task.examples) for _ in range(epochs)])
    trace = Trace(lr, ["step", "loss", "val_loss", "eff_lr_rare", "eff_lr_common"])
    rare = torch.arange(task.dim) >= data.rare_from
    for step in range(task.steps):
        docs = order[step * SPARSE_BATCH : (step + 1) * SPARSE_BATCH]
        ids, offsets = gather_documents(train, docs)
        logits = table(torch.from_numpy(ids), torch.from_numpy(offsets)).reshape(-1) + bias
        labels = torch.from_numpy(train.labels[docs]).double()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % max(task.steps // 100, 1) == 0 or step + 1 == task.steps:
            rates = optimizer.effective_lr(table.weight)
            trace.rows.append(
                [
                    step + 1,
                    loss.item(),
                    _split_loss(data, "val", table, bias)[0],
                    float(torch.nanmedian(rates[rare])),
                    float(torch.nanmedian(rates[~rare])),
                ]
            )
    val_loss = trace.rows[-1][2]  # the last row is the last step's
    test_loss, correct = _split_loss(data, "test", table, bias)
    dominated = data.rare_dominated("test")
    trace.results = {
        "val/loss": val_loss,
        "test/loss": test_loss,
        "test/accuracy": float(correct.mean()),
        "test/accuracy_rare_dominated": float(correct[dominated].mean()),
        "test/accuracy_common_dominated": float(correct[~dominated].mean()),
        "test/rare_dominated_share": float(dominated.mean()),
        "test/accuracy_true_weights": data.true_weights_accuracy("test"),
        "eff_lr/rare": trace.rows[-1][3],
        "eff_lr/common": trace.rows[-1][4],
    }
    trace.score = val_loss if math.isfinite(val_loss) else math.inf
    return trace


@torch.no_grad()
def _split_loss(data, split: str, table, bias) -> tuple[float, np.ndarray]:
    """(mean log loss, correct per example) of the model on a split."""
    s = data.splits[split]
    labels = torch.from_numpy(s.labels).double()
    logits = table(torch.from_numpy(s.ids), torch.from_numpy(s.offsets[:-1])).reshape(-1) + bias
    loss = float(F.binary_cross_entropy_with_logits(logits, labels))
    return loss, ((logits > 0).double() == labels).numpy()


# ----------------------------------------------------------------------------------- outputs
def write_trace(run_dir: Path, trace: Trace, writer: MetricWriter) -> None:
    """trajectory.csv, and each column but the step as a TensorBoard scalar."""
    with open(run_dir / "trajectory.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(trace.columns)
        out.writerows(trace.rows)
    tags = {name: _tag(name) for name in trace.columns[1:]}
    for row in trace.rows:
        values = {tags[k]: v for k, v in zip(trace.columns[1:], row[1:]) if math.isfinite(v)}
        writer.scalars(values, int(row[0]))
    writer.close()


def _tag(column: str) -> str:
    if column.startswith("eff_lr_"):
        return "eff_lr/" + column.removeprefix("eff_lr_")
    if column in ("x", "y"):
        return f"theta/{column}"
    return {"loss": "train/loss", "val_loss": "val/loss"}.get(column, f"train/{column}")
