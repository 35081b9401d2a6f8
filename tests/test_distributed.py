"""torchrun data parallelism on CPU (gloo): a 2-process run against a 1-process run with the
same global batch (weights, accumulators, counts, accuracy), for both models; only rank 0
writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import QUIET

pytestmark = pytest.mark.slow  # torchrun starts 2-4 processes a test: ~80 s in all

ARGS = [
    # ranks pool their slices with torch ops; the 1-process reference computes the same way
    # (its C++ kernel agrees to 1e-6, not bit for bit: tests/test_sparse_bag.py)
    "task.kernel=torch",
    "data.max_examples=400",
    "trainer.epochs=2",
    "trainer.num_threads=1",
    "optim.lr=0.5",
    "telemetry.every=0",
]


def train_command(tmp_path: Path, name: str, model: str, *extra: str) -> list[str]:
    return [
        "-m",
        "nlp_adagrad.train",
        *QUIET,
        *ARGS,
        f"model={model}",
        f"hydra.run.dir={tmp_path / name}",
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


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
    proc = subprocess.run(
        [*launcher, *train_command(tmp_path, name, model, *extra)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / name


def run_two_nodes(tmp_path: Path, name: str, model: str) -> Path:
    """Two torchrun agents, one process each, meeting through c10d rendezvous as two machines
    would (here both on localhost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                f"--rdzv_id={name}",
                *train_command(tmp_path, name, model),
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-3000:]
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
    assert load(part)[2]["train/steps"] == 7  # the first leg really stopped early
    assert "resumed from" in (resumed / "train.log").read_text()
    model_one, state_one, metrics_one = load(one)
    model_resumed, state_resumed, metrics_resumed = load(resumed)
    assert all(torch.equal(model_one[k], model_resumed[k]) for k in model_one)
    assert metrics_one["test/accuracy"] == metrics_resumed["test/accuracy"]


def test_two_nodes_through_rendezvous_give_the_same_weights_as_one_process(runs):
    one, _, tmp, model = runs
    nodes = run_two_nodes(tmp, "nodes", model)
    model_one, state_one, metrics_one = load(one)
    model_nodes, state_nodes, metrics_nodes = load(nodes)
    assert all(torch.equal(model_one[k], model_nodes[k]) for k in model_one)
    assert metrics_one["test/accuracy"] == metrics_nodes["test/accuracy"]


def test_backend_follows_the_device_and_gpus_are_counted_before_joining(monkeypatch):
    from nlp_adagrad import distributed
    from nlp_adagrad.errors import UserError

    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="--nproc_per_node"):
        distributed.setup(torch.device("cuda"))
