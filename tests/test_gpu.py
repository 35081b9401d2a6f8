"""CUDA end to end, run only where a GPU is visible (`pytest -m gpu`): the sparse step on the
GPU equals the CPU step, a training step never waits for the GPU, a BBC News run on the GPU
scores as one on the CPU, and two GPU processes under torchrun (NCCL) equal one."""

from __future__ import annotations

import pytest
import torch

from nlp_adagrad.optim.adagrad import Adagrad
from nlp_adagrad.sparse_bag import SparseBag
from nlp_adagrad.train import train
from tests.helpers import make_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_sparse_bag_and_adagrad_step_on_cuda_equal_the_cpu_step():
    ids = torch.randint(0, 5_000, (20_000,), generator=torch.Generator().manual_seed(0))
    offsets = torch.arange(0, 20_000, 100)
    tables = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        bag = SparseBag(5_000, 16).to(device)
        optimizer = Adagrad(bag.parameters(), lr=0.5)
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            bag(ids.to(device), offsets.to(device)).square().sum().backward()
            optimizer.step()
        tables.append((bag.weight.detach().cpu(), optimizer.row_updates(bag.weight).cpu()))
    torch.testing.assert_close(tables[0][0], tables[1][0], rtol=0, atol=1e-5)
    assert torch.equal(tables[0][1], tables[1][1])


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad", "sgd", "rmsprop", "sparse_adam"])
def test_a_training_step_never_waits_for_the_gpu(name):
    from tests.test_optim_family import FAMILY

    bag = SparseBag(5_000, 16).cuda()
    optimizer = FAMILY[name](bag.parameters())
    ids, offsets = torch.randint(0, 5_000, (2_000,)).cuda(), torch.arange(0, 2_000, 50).cuda()
    for _ in range(2):
        torch.cuda.set_sync_debug_mode("error")  # any host read-back raises
        try:
            optimizer.zero_grad(set_to_none=True)
            bag(ids, offsets).square().sum().backward()  # zero-padded: no distinct-id count
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_bbc_news_on_cuda_scores_as_on_cpu(tmp_path):
    metrics = {}
    for device in ("cpu", "cuda"):
        run_dir = tmp_path / device
        run_dir.mkdir()
        cfg = make_config("data.max_examples=600", "trainer.epochs=2", f"trainer.device={device}")
        metrics[device] = train(cfg, run_dir)
    assert abs(metrics["cpu"]["test/accuracy"] - metrics["cuda"]["test/accuracy"]) <= 0.01
    assert metrics["cuda"]["eff_lr/rare"] > 10 * metrics["cuda"]["eff_lr/common"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_processes_under_torchrun_equal_one(tmp_path):
    from tests.test_distributed import load, run

    one = run(tmp_path, "one", 1, "logreg", "trainer.device=cuda")
    two = run(tmp_path, "two", 2, "logreg", "trainer.device=cuda")
    model_one, _, metrics_one = load(one)
    model_two, _, metrics_two = load(two)
    for key in model_one:
        torch.testing.assert_close(model_one[key], model_two[key], rtol=0, atol=1e-5)
    assert metrics_one["test/accuracy"] == metrics_two["test/accuracy"]
