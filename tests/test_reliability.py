"""Reliability: exact resume after SIGKILL, damaged and hostile checkpoints, the NaN guard, and
runs started together never sharing a run dir."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nlp_adagrad.checkpoint import load_checkpoint, load_for_resume, save_checkpoint, step_files
from nlp_adagrad.errors import UserError
from nlp_adagrad.run import TIMING_KEYS
from nlp_adagrad.train import train
from tests.helpers import QUIET, make_config, run_cli

KILL_RUN = [
    "data.max_examples=800",
    "trainer.epochs=3",
    "trainer.checkpoint_every=3",
    "trainer.log_every=7",
    "telemetry.every=5",
    "trainer.num_threads=1",
]
# word vectors on a planted corpus: ~100 steps of 256 words
WORD_KILL_RUN = [
    "data=planted",
    "data.group_counts=[30,90]",
    "data.groups_per_level=3",
    "tokenizer.min_count=1",
    "model.dim=16",
    "trainer.batch_size=256",
    "trainer.epochs=3",
    "trainer.checkpoint_every=3",
    "trainer.log_every=7",
    "telemetry.every=5",
]
KILL_RUNS = {
    "classify": KILL_RUN,
    "skipgram": ["task=skipgram", *WORD_KILL_RUN],
    "glove": ["task=glove", "task.window=5", *WORD_KILL_RUN],
}


def metrics_without_timing(run_dir: Path) -> str:
    """metrics.json without the machine's timings, as text (where NaN equals NaN)."""
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    return json.dumps({k: v for k, v in metrics.items() if k not in TIMING_KEYS}, sort_keys=True)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(KILL_RUNS))
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, task):
    run = KILL_RUNS[task]
    whole, killed, resumed = tmp_path / "whole", tmp_path / "killed", tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlp_adagrad.train", *QUIET, *run, f"hydra.run.dir={killed}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any(int(p.stem.split("_")[1]) >= 30 for p in step_files(killed / "checkpoints")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    done = run_cli(*run, f"trainer.resume={killed}", f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_cli(*run, f"hydra.run.dir={whole}", cwd=tmp_path).returncode == 0

    assert metrics_without_timing(resumed) == metrics_without_timing(whole)
    assert (resumed / "token_stats.csv").read_bytes() == (whole / "token_stats.csv").read_bytes()
    if task != "classify":
        assert (resumed / "vectors.txt").read_bytes() == (whole / "vectors.txt").read_bytes()
    a = torch.load(whole / "checkpoints/last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"]
    torch.testing.assert_close(a["model"], b["model"], rtol=0, atol=0)
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)


def make_checkpoints(folder: Path, steps=(10, 20, 30)) -> None:
    for step in steps:
        save_checkpoint(folder, {"model": {}, "optimizer": {}, "step": step, "config": {}}, keep=3)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    make_checkpoints(tmp_path, steps=(1, 2, 3, 4, 5))
    assert [p.name for p in step_files(tmp_path)] == [f"step_{s:09d}.pt" for s in (5, 4, 3)]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    folder = tmp_path / "checkpoints"
    make_checkpoints(folder)
    newest = folder / "step_000000030.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)
    path, payload = load_for_resume(str(tmp_path), map_location="cpu")
    assert payload["step"] == 20 and path.name == "step_000000020.pt"
    assert "step_000000030.pt" in caplog.text or "last.pt" in caplog.text
    assert "resuming from" in caplog.text


def test_no_loadable_checkpoint_is_an_error_never_a_fresh_start(tmp_path):
    folder = tmp_path / "checkpoints"
    make_checkpoints(folder, steps=(10,))
    (folder / "step_000000010.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="no loadable checkpoint"):
        load_for_resume(str(tmp_path), map_location="cpu")
    with pytest.raises(UserError, match="no such run dir or checkpoint"):
        load_for_resume(str(tmp_path / "missing"), map_location="cpu")


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as f:
        pickle.dump({"model": Exploit(marker), "optimizer": {}, "step": 1, "config": {}}, f, 2)
    torch.save(
        {"model": Exploit(marker), "optimizer": {}, "step": 1, "config": {}},
        tmp_path / "hostile_torch.pt",
    )
    for path in (hostile, tmp_path / "hostile_torch.pt"):
        with pytest.raises(UserError, match="cannot load checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()


def test_nan_guard_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    # SGD on token counts with an absurd rate overflows to inf within a few steps
    proc = run_cli(
        "optim=sgd",
        "optim.lr=1e37",
        "model.mode=sum",
        "data.max_examples=200",
        "trainer.checkpoint_every=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stdout[-2000:]
    errors = [line for line in proc.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "non-finite" in errors[0] and "at step" in errors[0]
    good = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    assert f"step_{good['step']:09d}.pt" in errors[0]


@pytest.mark.parametrize("lr", [0.01, 0.1, 1.0, 10.0, 100.0])
def test_adagrad_never_produces_nan_on_bbc_news_from_lr_001_to_100(tmp_path, lr):
    metrics = train(
        make_config(
            f"optim.lr={lr}", "data.max_examples=400", "trainer.epochs=2", "telemetry.every=0"
        ),
        tmp_path,
    )
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


@pytest.mark.slow
def test_runs_started_together_get_their_own_run_dirs(tmp_path):
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nlp_adagrad.train",
                *QUIET,
                "data.max_examples=60",
                "trainer.epochs=1",
                "telemetry.every=0",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert len({p.parent for p in (tmp_path / "outputs").rglob("metrics.json")}) == 3


def test_a_run_dir_that_holds_a_run_is_refused(tmp_path):
    assert (
        run_cli(
            "data.max_examples=60", "trainer.epochs=1", "hydra.run.dir=same", cwd=tmp_path
        ).returncode
        == 0
    )
    before = {p: p.read_bytes() for p in (tmp_path / "same").rglob("*") if p.is_file()}
    again = run_cli("data.max_examples=60", "trainer.epochs=1", "hydra.run.dir=same", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    # the refused run wrote nothing into the first one's folder: not its log, not .hydra/
    assert {p: p.read_bytes() for p in (tmp_path / "same").rglob("*") if p.is_file()} == before


def _guarded_model(check_every: int = 3):
    from torch import nn

    from nlp_adagrad.guard import DivergenceGuard

    model = nn.Linear(3, 1)
    return model, DivergenceGuard(model, check_every=check_every)


def test_guard_names_the_culprit_and_defers_its_read_back_as_configured():
    model, guard = _guarded_model()
    loss = model(torch.ones(1, 3)).sum()
    loss.backward()
    assert guard.after_step(loss, 1) is None and guard.after_step(loss, 2) is None
    model.weight.grad[0, 1] = float("nan")
    assert guard.after_step(loss, 3) == "gradient of weight at steps 1..3"  # read at step 3
    model.weight.grad.zero_()
    assert guard.after_step(loss, 4) is None and guard.check(4) is None  # a fresh window
    assert guard.after_step(torch.tensor(float("inf")), 5) is None  # not read until step 6
    assert guard.check(5) == "loss at step 5"


@pytest.mark.parametrize("check_every", [1, 3])  # 1: read at once, with NumPy on the CPU
def test_guard_sees_any_non_finite_value_and_never_a_large_finite_one(check_every):
    model, guard = _guarded_model(check_every)
    loss = model(torch.ones(1, 3)).sum()
    loss.backward()
    with torch.no_grad():
        model.weight.grad.fill_(3e38)  # float32's edge: a float32 sum would overflow
        model.weight.grad[0, 0] = -3e38
    assert guard.after_step(loss, 1) is None and guard.after_step(loss, 2) is None
    assert guard.after_step(loss, 3) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        model.weight.grad[0, 2] = bad
        assert guard.after_step(loss, 3) == "gradient of weight at step 3", bad
        model.weight.grad[0, 2] = 1.0


def test_guard_finds_a_non_finite_parameter_the_loss_has_not_met():
    # a rare row blown up by an update, before any batch reads it: caught before a checkpoint
    model, guard = _guarded_model()
    assert guard.bad_parameter() is None
    with torch.no_grad():
        model.bias.fill_(float("inf"))
        model.weight[0, 0] = -float("inf")
    assert guard.bad_parameter() == "weight"
