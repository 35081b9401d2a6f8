"""torchrun data parallelism on CPU (gloo): a 2-process run against a 1-process run with the
same global batch (weights, accumulators, counts, accuracy), for both models; only rank 0
writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import QUIET

ARGS = [
    "data.max_examples=400",
    "trainer.epochs=2",
    "trainer.num_threads=1",
    "optim.lr=0.5",
    "telemetry.every=0",
]


def run(tmp_path: Path, name: str, processes: int, model: str, *extra: str) -> Path:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--standalone",
        ]
        if processes > 1
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            *launcher,
            "-m",
            "nlp_adagrad.train",
            *QUIET,
            *ARGS,
            f"model={model}",
            f"hydra.run.dir={tmp_path / name}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / name


@pytest.fixture(scope="module", params=["logreg", "fasttext"])
def runs(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp(f"ddp_{request.param}")
    return run(tmp, "one", 1, request.param), run(tmp, "two", 2, request.param), tmp, request.param


def load(run_dir: Path):
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return (
        state["model"],
        state["optimizer"]["state"],
        json.loads((run_dir / "metrics.json").read_text()),
    )


def test_two_processes_count_updates_and_score_like_one(runs):
    one, two, tmp, _ = runs
    _, state_one, metrics_one = load(one)
    _, state_two, metrics_two = load(two)
    for i in state_one:
        if "updates" in state_one[i]:  # telemetry counts are global, not per rank
            assert torch.equal(state_one[i]["updates"], state_two[i]["updates"])
        torch.testing.assert_close(state_one[i]["sum"], state_two[i]["sum"], rtol=0, atol=1e-5)
    assert metrics_one["test/accuracy"] == metrics_two["test/accuracy"]
    assert metrics_one["train/tokens"] == metrics_two["train/tokens"]
    # only rank 0 wrote: one run dir under tmp besides the single-process one
    assert sorted(p.name for p in tmp.iterdir()) == ["one", "two"]


def test_two_processes_give_the_same_weights_as_one(runs):
    one, two, _, _ = runs
    model_one, _, _ = load(one)
    model_two, _, _ = load(two)
    for key in model_one:
        torch.testing.assert_close(model_one[key], model_two[key], rtol=0, atol=1e-5)
    # in fact bit for bit: every rank computes the one-process gradient
    assert all(torch.equal(model_one[k], model_two[k]) for k in model_one)


def test_a_two_process_run_resumes_to_the_same_end(runs):
    one, _, tmp, model = runs
    part = run(tmp, "part", 2, model, "trainer.max_steps=7", "trainer.checkpoint_every=5")
    resumed = run(tmp, "resumed", 2, model, f"trainer.resume={part}")
    model_one, state_one, metrics_one = load(one)
    model_resumed, state_resumed, metrics_resumed = load(resumed)
    assert all(torch.equal(model_one[k], model_resumed[k]) for k in model_one)
    assert metrics_one["test/accuracy"] == metrics_resumed["test/accuracy"]
