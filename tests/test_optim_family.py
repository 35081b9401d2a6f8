"""The optimizer family against references and against the textbook.

Parity: row-wise Adagrad against a NumPy reference, RMSprop against torch.optim.RMSprop,
SparseAdam against torch.optim.SparseAdam. Theory: with stationary gradients at Zipf-drawn rows
the slope of log eff_lr on log updates is -0.5 for Adagrad and row-wise Adagrad, 0 for SGD.
Textbook claims: Adagrad's rates never rise, RMSprop's can and recover after gradients shrink.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nlp_adagrad.fits import binned_fit
from nlp_adagrad.optim import OPTIMIZERS, SGD, Adagrad, RMSprop, RowwiseAdagrad, SparseAdam
from nlp_adagrad.sparse_bag import ZERO_PADDED, SparseBag

FAMILY = {
    "adagrad": lambda ps: Adagrad(ps, lr=0.1),
    "rowwise_adagrad": lambda ps: RowwiseAdagrad(ps, lr=0.1),
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "rmsprop": lambda ps: RMSprop(ps, lr=0.01, alpha=0.9),
    "sparse_adam": lambda ps: SparseAdam(ps, lr=0.01),
}


def sparse(rows, values, shape):
    return torch.sparse_coo_tensor(
        torch.as_tensor(np.asarray([rows])), torch.as_tensor(values), shape, check_invariants=True
    )


def random_sparse_grads(num_rows, dim, steps, seed, rows_per_step=6, high=None):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, high or num_rows, size=rows_per_step)
        yield rows, rng.normal(size=(rows_per_step, dim)).astype(np.float32)


def test_rowwise_adagrad_matches_numpy_reference_with_one_accumulator_per_row():
    w0 = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    p = nn.Parameter(torch.from_numpy(w0.copy()))
    opt = RowwiseAdagrad([p], lr=0.5, eps=1e-10)
    w, G = w0.astype(np.float64), np.zeros(10)
    for rows, vals in random_sparse_grads(10, 4, steps=5, seed=1, high=7):
        p.grad = sparse(rows, vals, (10, 4))
        opt.step()
        g = np.zeros_like(w)
        np.add.at(g, rows, vals)
        r = np.unique(rows)
        G[r] += (g[r] ** 2).mean(axis=1)
        w[r] -= 0.5 * g[r] / (np.sqrt(G[r])[:, None] + 1e-10)
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-6, atol=1e-6)
    assert opt.state[p]["sum"].shape == (10,)  # 1/dim of element-wise Adagrad's state
    expected = np.where(G > 0, 0.5 / (np.sqrt(G) + 1e-10), np.nan)
    np.testing.assert_allclose(opt.effective_lr(p).numpy(), expected, rtol=1e-6)


def test_rmsprop_matches_torch_on_dense_gradients():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(6, 3))
    b = nn.Parameter(a.detach().clone())
    ours, theirs = RMSprop([a], lr=0.01, alpha=0.9), torch.optim.RMSprop([b], lr=0.01, alpha=0.9)
    for _ in range(5):
        g = torch.randn(6, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_sparse_adam_matches_torch_and_reports_the_rate_on_the_newest_gradient():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(12, 3))
    b = nn.Parameter(a.detach().clone())
    ours, theirs = SparseAdam([a], lr=0.01), torch.optim.SparseAdam([b], lr=0.01)
    last = np.zeros(12)
    for t, (rows, vals) in enumerate(random_sparse_grads(12, 3, steps=6, seed=2, high=9), 1):
        a.grad = sparse(rows, vals, (12, 3))
        b.grad = a.grad.clone()
        ours.step()
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            theirs.step()
        last[rows] = t
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # lr (1 - b1) sqrt(1 - b2^s) / (1 - b1^s) / (sqrt(mean_j v_ij) + eps), s the row's last step
    v = theirs.state[b]["exp_avg_sq"].double().mean(dim=1).numpy()
    with np.errstate(invalid="ignore"):  # rows never touched: 0 / 0
        scale = 0.01 * 0.1 * np.sqrt(1 - 0.999**last) / (1 - 0.9**last)
    got = ours.effective_lr(a).numpy()
    touched = last > 0
    scale[~touched] = 0
    np.testing.assert_allclose(got[touched], (scale / (np.sqrt(v) + 1e-8))[touched], rtol=1e-6)
    assert np.isnan(got[~touched]).all()


# Each optimizer with a step-dependent rate too: decays and SparseAdam's bias corrections are
# read at the row's last update, not at the optimizer's current step
EXACT_STEP = {
    **FAMILY,
    "adagrad_lr_decay": lambda ps: Adagrad(ps, lr=0.1, lr_decay=0.01),
    "sgd_linear_decay": lambda ps: SGD(ps, lr=0.1, linear_decay=True, total_steps=2000),
}


@pytest.mark.parametrize("name", sorted(EXACT_STEP))
@pytest.mark.parametrize("first_step", [1, 1001])
def test_a_row_touched_for_the_first_time_moves_by_its_effective_rate_times_the_gradient(
    name, first_step
):
    """The definition, checked against the step itself: eff_lr is the coefficient on the
    row's newest gradient. Coordinate-wise for every optimizer; and the row's summary rate
    for a gradient whose coordinates have equal magnitudes (where the two must agree)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    w[:2] = 0  # the move is then the float32 step itself, not a difference of large weights
    p = nn.Parameter(torch.from_numpy(w))
    opt = EXACT_STEP[name]([p])
    for _ in range(first_step - 1):  # other rows only: rows 0 and 1 are fresh
        p.grad = sparse([5, 6], rng.normal(size=(2, 4)).astype(np.float32), p.shape)
        opt.step()
    unequal = rng.normal(size=4)
    equal = 0.7 * rng.choice([-1.0, 1.0], size=4)
    before = p.detach().double().clone()
    p.grad = sparse([0, 1], np.stack([unequal, equal]).astype(np.float32), p.shape)
    opt.step()
    moved = (p.detach().double() - before).numpy()
    g = p.grad.to_dense().double().numpy()
    coords = opt.effective_lr_coords(p).numpy()
    np.testing.assert_allclose(moved[:2], -coords[:2] * g[:2], rtol=1e-6)
    row_rate = opt.effective_lr(p).numpy()
    np.testing.assert_allclose(moved[1], -row_rate[1] * g[1], rtol=1e-6)
    # read later, after steps that did not touch them, the rates stay those of that update
    for _ in range(20):
        p.grad = sparse([5], rng.normal(size=(1, 4)).astype(np.float32), p.shape)
        opt.step()
    np.testing.assert_allclose(opt.effective_lr(p).numpy()[:2], row_rate[:2], rtol=1e-12)


def test_the_row_rate_summarises_coordinates_through_the_mean_second_moment():
    """Not the mean of coordinate rates: a coordinate that got 1e-4 of the gradient would
    set that mean alone (its rate is 1e4 times the others')."""
    p = nn.Parameter(torch.zeros(3, 5))
    opt = Adagrad([p], lr=1.0, eps=0.0)
    g = np.array([[1.0, 1.0, 1.0, 1.0, 1e-4]], np.float32)
    p.grad = sparse([0], g, p.shape)
    opt.step()
    rate = opt.effective_lr(p).numpy()[0]
    assert rate == pytest.approx(1 / np.sqrt((4 + 1e-8) / 5), rel=1e-6)
    coords = opt.effective_lr_coords(p).numpy()[0]
    assert coords.mean() > 1000 * rate  # what the old summary would have reported
    assert coords.min() == pytest.approx(1.0) and coords.max() == pytest.approx(1e4, rel=1e-3)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_sparse_step_equals_dense_step_on_touched_rows(name):
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(20, 4))
    b = nn.Parameter(a.detach().clone())
    start = a.detach().clone()
    opt_a, opt_b = FAMILY[name]([a]), FAMILY[name]([b])
    rows = [3, 7, 3, 11]
    vals = torch.randn(4, 4)
    a.grad = sparse(rows, vals, (20, 4))
    b.grad = a.grad.to_dense()
    opt_a.step()
    opt_b.step()
    touched = [3, 7, 11]
    torch.testing.assert_close(a[touched], b[touched], rtol=1e-6, atol=1e-7)
    untouched = [i for i in range(20) if i not in touched]
    assert torch.equal(a.detach()[untouched], start[untouched])  # bit for bit


def zipf_run(make_optimizer, steps=3000, num_rows=2000, dim=8, seed=0):
    """Gradients of stationary, independent magnitude on the unique rows of Zipf-drawn batches.

    Magnitudes are uniform in [0.5, 1.5] with random signs: with Gaussian values a coordinate
    seen once has E[1 / |g|] = infinity, and the row mean of such rates inflates the rare end.
    """
    rng = np.random.default_rng(seed)
    p = nn.Parameter(torch.zeros(num_rows, dim))
    opt = make_optimizer([p])
    probs = 1.0 / np.arange(1, num_rows + 1) ** 1.1
    probs /= probs.sum()
    for _ in range(steps):
        rows = np.unique(rng.choice(num_rows, size=32, p=probs))
        magnitude = rng.uniform(0.5, 1.5, size=(len(rows), dim))
        sign = rng.choice([-1.0, 1.0], size=(len(rows), dim))
        p.grad = sparse(rows, (magnitude * sign).astype(np.float32), p.shape)
        opt.step()
    return opt.effective_lr(p).numpy().astype(np.float64), opt.row_updates(p).numpy()


@pytest.mark.parametrize(
    "name,slope,tol", [("adagrad", -0.5, 0.05), ("rowwise_adagrad", -0.5, 0.05), ("sgd", 0.0, 0.01)]
)
def test_theory_slope_with_stationary_gradients(name, slope, tol):
    eff_lr, updates = zipf_run(FAMILY[name])
    fit = binned_fit(updates, eff_lr)
    assert fit.slope == pytest.approx(slope, abs=tol)


def trace_rates(make_optimizer, scale_at, steps=400, seed=0):
    """Per-step eff_lr of 5 rows all touched every step; gradient scale from scale_at(step)."""
    rng = np.random.default_rng(seed)
    p = nn.Parameter(torch.zeros(5, 4))
    opt = make_optimizer([p])
    rates = []
    for t in range(steps):
        vals = (rng.normal(size=(5, 4)) * scale_at(t)).astype(np.float32)
        p.grad = sparse(list(range(5)), vals, p.shape)
        opt.step()
        rates.append(opt.effective_lr(p).numpy())
    return np.array(rates)


def test_adagrad_rates_never_increase_rmsprop_rates_can():
    ada = trace_rates(FAMILY["adagrad"], lambda t: 1.0)
    assert (np.diff(ada, axis=0) <= 0).all()
    rms = trace_rates(FAMILY["rmsprop"], lambda t: 1.0)
    assert (np.diff(rms, axis=0) > 0).any()


def test_after_gradients_shrink_100x_rmsprop_recovers_adagrad_stays_low():
    half = 200
    drop = lambda t: 1.0 if t < half else 0.01  # noqa: E731
    ada = trace_rates(FAMILY["adagrad"], drop)
    rms = trace_rates(FAMILY["rmsprop"], drop)
    assert (ada[-1] / ada[half - 1] < 1.01).all()  # the sum remembers the large gradients
    assert (rms[-1] / rms[half - 1] > 50).all()  # the leaky average forgets them: ~100x


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad", "rmsprop", "sparse_adam"])
def test_a_row_touched_only_by_zero_gradients_has_no_rate(name):
    """Not lr / eps: a saturated softmax sends exactly-zero gradients to a token's row."""
    p = nn.Parameter(torch.zeros(4, 3))
    opt = FAMILY[name]([p])
    vals = np.zeros((2, 3), np.float32)
    vals[0] = 1.0  # row 1 is touched, with an exactly-zero gradient
    p.grad = sparse([0, 1], vals, p.shape)
    opt.step()
    rates = opt.effective_lr(p)
    assert torch.isfinite(rates[0]) and torch.isnan(rates[1])
    assert opt.row_updates(p)[1] == 1  # it was touched all the same


def bag_and_optimizer(name: str, padded: bool, rows: int, dim: int, mode: str):
    """A seeded SparseBag emitting zero-padded (or coalesced) gradients, and its optimizer."""
    torch.manual_seed(0)
    bag = SparseBag(rows, dim, mode)
    bag.zero_padded_grad = padded
    return bag, FAMILY[name](bag.parameters())


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_zero_padded_gradients_step_exactly_like_coalesced_ones(name, weight_decay):
    # CUDA's layout (SparseBag pads there, so no step waits for the GPU), forced on CPU: the
    # same weights, state and update counts, bit for bit, over 12 steps
    results = []
    for padded in (False, True):
        bag, optimizer = bag_and_optimizer(name, padded, rows=60, dim=5, mode="mean")
        for group in optimizer.param_groups:
            group["weight_decay"] = weight_decay
        rng = torch.Generator().manual_seed(1)
        for step in range(12):
            optimizer.zero_grad(set_to_none=True)
            ids = torch.randint(0, 30, (40,), generator=rng)  # many repeats: long padding
            offsets = torch.tensor([0, 9, 9, 25])  # an empty bag
            bag(ids, offsets).square().sum().backward()
            if padded and step == 0:
                assert bag.weight.grad._nnz() == 40  # fixed size: one row per id position
            optimizer.step()
        results.append((bag.weight.detach(), optimizer.state[bag.weight]))
    (w_a, s_a), (w_b, s_b) = results
    assert torch.equal(w_a, w_b)
    for key, value in s_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, s_b[key]), key


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_a_zero_padded_gradient_summed_with_another_is_stepped_as_plain_coo(name):
    results = []
    for padded in (False, True):
        bag, optimizer = bag_and_optimizer(name, padded, rows=30, dim=3, mode="sum")
        for ids in (torch.tensor([4, 9, 9, 2, 4]), torch.tensor([9, 1, 1, 7])):
            bag(ids, torch.tensor([0])).square().sum().backward()  # no zero_grad: summed
        assert not getattr(bag.weight.grad, ZERO_PADDED, False)
        optimizer.step()
        results.append(bag.weight.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("config_type", sorted(OPTIMIZERS, key=lambda t: t.__name__))
def test_each_constructor_takes_its_configs_fields_with_the_configs_defaults(config_type):
    import dataclasses
    import inspect

    parameters = inspect.signature(OPTIMIZERS[config_type].__init__).parameters
    taken = {n: p.default for n, p in parameters.items() if n not in ("self", "params")}
    taken.pop("total_steps", None)  # SGD's schedule length comes from the run, not the config
    fields = {f.name: f.default for f in dataclasses.fields(config_type) if f.name != "name"}
    assert taken == fields  # one place for defaults: the config dataclass


@pytest.mark.parametrize("fused", [None, False], ids=["cpp counters", "torch counters"])
def test_the_steps_keep_the_count_of_updated_rows_that_a_pass_over_them_gives(fused):
    """What a snapshot reads as eff_lr/tokens_updated: kept by the steps below a limit (the
    words, not the bigram buckets after them), equal to counting the counters, through
    repeats of a zero-padded gradient, and counted again from a loaded state."""
    rng = np.random.default_rng(0)
    table = nn.Parameter(torch.randn(1_000, 4))
    optimizer = Adagrad([table], lr=0.1, fused=fused)
    optimizer.track_updated_rows(table, 600)
    assert optimizer.updated_rows(table, 600) == 0
    for step in range(40):
        rows = torch.from_numpy(np.unique(rng.integers(0, 1_000, 60)))
        values = torch.randn(len(rows), 4)
        if step % 3 == 2:  # zero-padded: each row repeated once, the copy's values zero
            rows = rows.repeat_interleave(2)
            values = torch.stack([values, torch.zeros_like(values)], 1).reshape(-1, 4)
        grad = torch.sparse_coo_tensor(rows[None], values, table.shape, check_invariants=True)
        if step % 3 == 2:
            setattr(grad, ZERO_PADDED, True)
        table.grad = grad
        optimizer.step()
        counted = int((optimizer.row_updates(table)[:600] > 0).sum())
        assert optimizer.updated_rows(table, 600) == counted, step
    assert 300 < counted < 600
    assert optimizer.updated_rows(table, 1_000) == int((optimizer.row_updates(table) > 0).sum())
    fresh = Adagrad([table], lr=0.1, fused=fused)
    fresh.track_updated_rows(table, 600)
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.updated_rows(table, 600) == counted
