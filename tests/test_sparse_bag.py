"""SparseBag gives stock EmbeddingBag's forward and (coalesced) gradient, with distinct rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nlp_adagrad.optim import unique_rows
from nlp_adagrad.sparse_bag import SparseBag


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
