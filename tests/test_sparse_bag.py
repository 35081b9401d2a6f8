"""SparseBag gives stock EmbeddingBag's forward and (coalesced) gradient, with distinct rows;
the classifiers' C++ kernel gives what their forward and backward give."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.models import FastText, LogReg
from nlp_adagrad.optim import unique_rows
from nlp_adagrad.sparse_bag import SparseBag
from tests.helpers import at_thread_counts


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_forward_and_gradient_match_embedding_bag(mode):
    torch.manual_seed(0)
    ours = SparseBag(200, 6, mode)
    stock = nn.EmbeddingBag(200, 6, mode=mode, sparse=True)
    stock.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 50, (300,))
    offsets = torch.tensor([0, 10, 10, 150, 299])  # an empty bag and a one-token bag
    weights = torch.randn(5, 6)
    out_ours, out_stock = ours(ids, offsets), stock(ids, offsets)
    torch.testing.assert_close(out_ours, out_stock)
    (out_ours * weights).sum().backward()
    (out_stock * weights).sum().backward()
    expected = stock.weight.grad.coalesce()
    rows, values = unique_rows(ours.weight.grad)
    assert torch.equal(rows, expected._indices()[0])
    assert torch.equal(ours.weight.grad._indices()[0], rows)  # already one row per id, sorted
    torch.testing.assert_close(values, expected._values(), rtol=1e-6, atol=1e-6)


def test_unique_rows_of_an_uncoalesced_gradient_sums_duplicates_in_sorted_order():
    idx = torch.tensor([[7, 2, 7, 0, 2]])
    vals = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    grad = torch.sparse_coo_tensor(idx, vals, (9, 2), check_invariants=True)
    rows, summed = unique_rows(grad)
    assert rows.tolist() == [0, 2, 7]
    assert summed.tolist() == [[6, 7], [2 + 8, 3 + 9], [0 + 4, 1 + 5]]


def test_the_gradient_arrives_flagged_coalesced_and_accumulation_stays_correct():
    # the flag spares the optimizer its sortedness check (a GPU wait on CUDA); autograd drops
    # it when storing a first gradient, SparseBag restores it only for what it emitted itself
    torch.manual_seed(0)
    bag = SparseBag(20, 3, "sum")
    reference = nn.EmbeddingBag(20, 3, mode="sum", sparse=True)
    reference.load_state_dict(bag.state_dict())
    batches = [
        (torch.tensor([5, 2, 2, 9]), torch.tensor([0, 2])),
        (torch.tensor([9, 1, 5]), torch.tensor([0, 1])),
    ]
    ids, offsets = batches[0]
    bag(ids, offsets).square().sum().backward()
    assert bag.weight.grad.is_coalesced()
    for ids, offsets in batches[1:]:  # a second backward without zero_grad: summed rows
        bag(ids, offsets).square().sum().backward()
    for ids, offsets in batches:
        reference(ids, offsets).square().sum().backward()
    rows, values = unique_rows(bag.weight.grad)
    expected = reference.weight.grad.coalesce()
    assert torch.equal(rows, expected._indices()[0])
    torch.testing.assert_close(values, expected._values())


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_the_zero_padded_gradient_is_the_same_gradient_at_a_fixed_size(mode):
    from nlp_adagrad.sparse_bag import ZERO_PADDED

    torch.manual_seed(0)
    bag = SparseBag(200, 6, mode)
    ids = torch.randint(0, 50, (300,))
    offsets = torch.tensor([0, 10, 10, 150, 299])
    weights = torch.randn(5, 6)
    grads = []
    for padded in (False, True):
        bag.zero_padded_grad = padded
        bag.weight.grad = None
        (bag(ids, offsets) * weights).sum().backward()
        grads.append(bag.weight.grad)
    coalesced, padded = grads
    assert getattr(padded, ZERO_PADDED, False) and padded._nnz() == 300
    rows, values = padded._indices()[0], padded._values()
    distinct = coalesced._nnz()
    assert torch.equal(rows[:distinct], coalesced._indices()[0])
    assert (rows[distinct:] == rows[distinct - 1]).all()  # padding repeats the largest id
    assert torch.equal(values[:distinct], coalesced._values())
    assert (values[distinct:] == 0).all()
    torch.testing.assert_close(padded.to_dense(), coalesced.to_dense(), rtol=0, atol=0)
    # a summed gradient loses the mark and is read as plain COO: still the same gradient
    (bag(ids, offsets) * weights).sum().backward()
    assert not getattr(bag.weight.grad, ZERO_PADDED, False)
    rows2, values2 = unique_rows(bag.weight.grad)
    assert torch.equal(rows2, coalesced._indices()[0])
    torch.testing.assert_close(values2, 2 * coalesced._values())


def _classifier(kind: str, mode: str, gen: torch.Generator, rows: int = 300):
    model = LogReg(rows, 4, mode) if kind == "logreg" else FastText(rows, 4, 8, mode)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5, generator=gen)
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad
        for name, p in model.named_parameters()
    }


@pytest.mark.parametrize("kind", ["logreg", "fasttext"])
@pytest.mark.parametrize("mode", ["mean", "sum"])
# a small table finds the batch's rows through its slot scratch, a large one by sorting them
@pytest.mark.parametrize("rows", [300, 2**18 + 300])
def test_the_bag_kernel_gives_forward_and_backwards_loss_and_gradients(kind, mode, rows):
    kernel = native_kernels("cpp", "task.kernel")  # this test is about the kernel: it must build
    gen = torch.Generator().manual_seed(0)
    model = _classifier(kind, mode, gen, rows)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, rows * 2 // 5, (400,), generator=gen)  # the last rows stay untouched
    ids[:3] = torch.tensor([rows * 2 // 5 - 1, 0, rows * 2 // 5 - 1])  # both ends, a repeat
    offsets = torch.tensor([0, 10, 10, 150, 399])  # an empty bag and a one-token bag
    labels = torch.tensor([0, 3, 1, 2, 3])
    loss = model.loss_and_gradients(ids, offsets, labels, kernel)
    expected = reference.loss_and_gradients(ids, offsets, labels)  # forward + backward
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    table = model.embedding.weight.grad
    assert table.is_coalesced()
    assert torch.equal(table._indices()[0], torch.unique(ids))  # sorted distinct rows only
    got, want = _grads(model), _grads(reference)
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6 * scale)


def test_the_bag_kernel_splits_documents_over_threads_without_changing_the_gradients():
    kernel = native_kernels("cpp", "task.kernel")
    gen = torch.Generator().manual_seed(1)
    model = _classifier("fasttext", "mean", gen)
    ids = torch.randint(0, 300, (40_000,), generator=gen)  # 2 threads: 2 chunks
    offsets = torch.arange(0, 40_000, 1000)
    labels = torch.randint(0, 4, (40,), generator=gen)

    def step() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss = model.loss_and_gradients(ids, offsets, labels, kernel)
        return [loss, *_grads(model).values()]

    one, two, again = at_thread_counts(step)
    assert all(torch.equal(a, b) for a, b in zip(two, again))  # a thread count: fixed bits
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not all(torch.equal(a, b) for a, b in zip(one, two))  # two chunks really ran


def test_the_kernels_rows_come_sorted_from_any_byte_of_a_large_table():
    # the distinct rows are radix-sorted a byte a pass: ids that differ only in their 1st,
    # 2nd, 3rd or 4th byte (a table of 2^24 + 5 rows, 4 passes)
    kernel = native_kernels("cpp", "task.kernel")
    model = LogReg(2**24 + 5, 2, "sum")
    ids = torch.tensor([2**24 + 4, 0, 65536, 255, 2**24, 256, 65535, 2**24 - 1, 256, 1, 2**24])
    offsets = torch.tensor([0, 4])
    model.loss_and_gradients(ids, offsets, torch.tensor([0, 1]), kernel)
    assert model.embedding.weight.grad._indices()[0].tolist() == torch.unique(ids).tolist()


def _huge_page_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_a_large_table_sits_on_2mb_pages_and_starts_as_embedding_bags_does():
    torch.manual_seed(0)
    stock = nn.EmbeddingBag(1_100_000, 16, mode="mean", sparse=True).weight.detach().clone()
    torch.manual_seed(0)
    before = _huge_page_kb() if Path("/proc/self/smaps_rollup").exists() else 0
    bag = SparseBag(1_100_000, 16, "mean")  # 70 MB: above pages.MIN_BYTES
    assert torch.equal(bag.weight.detach(), stock)  # same draws, same values
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[never]" in mode.read_text():
        pytest.skip("this system gives no 2 MB pages")
    assert _huge_page_kb() - before > 60 * 1024  # most of its 70 MB
