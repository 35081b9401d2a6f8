"""Optimizers against references: a hand-written NumPy Adagrad and torch.optim.Adagrad / SGD.

The trainer's step and its per-token effective learning rate must match the reference to 1e-6,
and rows that no batch touched must never change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nlp_adagrad import kernels
from nlp_adagrad.errors import UserError
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.optim import SGD, Adagrad, unique_rows
from nlp_adagrad.sparse_bag import ZERO_PADDED


class NumpyAdagrad:
    """DESIGN §5 written out: G += g*g; clr = lr/(1+(t-1)*decay); w -= clr*g/(sqrt(G)+eps).

    A row's rate: clr at its last update / (sqrt(mean_j G_ij) + eps); a coordinate's:
    that clr / (sqrt(G_ij) + eps).
    """

    def __init__(self, w, lr, lr_decay=0.0, eps=1e-10, init=0.0):
        self.w, self.lr, self.lr_decay, self.eps = w.astype(np.float64), lr, lr_decay, eps
        self.G = np.full_like(self.w, init)
        self.t = 0
        self.updates = np.zeros(len(w), dtype=np.int64)
        self.last = np.zeros(len(w), dtype=np.int64)

    def clr(self, t=None):
        return self.lr / (1 + ((self.t if t is None else t) - 1) * self.lr_decay)

    def step(self, rows, grads):
        """rows may repeat: the gradient of a row is the sum of its entries (a sparse grad)."""
        self.t += 1
        g = np.zeros_like(self.w)
        np.add.at(g, rows, grads)
        touched = np.unique(rows)
        self.G[touched] += g[touched] ** 2
        self.w[touched] -= self.clr() * g[touched] / (np.sqrt(self.G[touched]) + self.eps)
        self.updates[touched] += 1
        self.last[touched] = self.t

    def effective_lr(self):
        rates = self.clr(self.last) / (np.sqrt(self.G.mean(axis=1)) + self.eps)
        return np.where(self.updates > 0, rates, np.nan)

    def effective_lr_coords(self):
        rates = self.clr(self.last)[:, None] / (np.sqrt(self.G) + self.eps)
        return np.where((self.updates[:, None] > 0) & (self.G > 0), rates, np.nan)


def sparse_grad(rows, values, shape):
    return torch.sparse_coo_tensor(
        torch.tensor([rows]), torch.tensor(values), shape, check_invariants=True
    )


@pytest.mark.parametrize("lr_decay,init", [(0.0, 0.0), (0.1, 0.3)])
def test_adagrad_matches_numpy_reference(lr_decay, init):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(12, 3)).astype(np.float32)
    param = nn.Parameter(torch.from_numpy(w0.copy()))
    ours = Adagrad([param], lr=0.3, lr_decay=lr_decay, initial_accumulator_value=init)
    ref = NumpyAdagrad(w0, lr=0.3, lr_decay=lr_decay, init=init)
    for _ in range(6):
        rows = rng.integers(0, 8, size=5)  # rows 8..11 are never touched; repeats are common
        grads = rng.normal(size=(5, 3)).astype(np.float32)
        param.grad = sparse_grad(rows.tolist(), grads, (12, 3))
        ours.step()
        ref.step(rows, grads)
        np.testing.assert_allclose(param.detach().numpy(), ref.w, rtol=1e-6, atol=1e-6)
        ours_lr = ours.effective_lr(param).numpy()
        np.testing.assert_allclose(ours_lr, ref.effective_lr(), rtol=1e-6)
        coords = ours.effective_lr_coords(param).numpy()
        np.testing.assert_allclose(coords, ref.effective_lr_coords(), rtol=1e-6)
        np.testing.assert_array_equal(ours.row_updates(param).numpy(), ref.updates)
    # never-touched rows: bit-for-bit unchanged, and reported as missing, not lr/eps
    np.testing.assert_array_equal(param.detach().numpy()[8:], w0[8:])
    assert np.isnan(ours.effective_lr(param).numpy()[8:]).all()


def test_adagrad_matches_torch_on_sparse_and_dense():
    torch.manual_seed(0)
    emb_a = nn.EmbeddingBag(50, 4, mode="mean", sparse=True)
    lin_a = nn.Linear(4, 3)
    emb_b, lin_b = nn.EmbeddingBag(50, 4, mode="mean", sparse=True), nn.Linear(4, 3)
    emb_b.load_state_dict(emb_a.state_dict())
    lin_b.load_state_dict(lin_a.state_dict())
    kwargs = dict(lr=0.2, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-8)
    ours = Adagrad([*emb_a.parameters(), *lin_a.parameters()], **kwargs)
    theirs = torch.optim.Adagrad([*emb_b.parameters(), *lin_b.parameters()], **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        ids = torch.randint(0, 30, (40,), generator=gen)
        offsets = torch.arange(0, 40, 8)
        labels = torch.randint(0, 3, (5,), generator=gen)
        for emb, lin, opt in ((emb_a, lin_a, ours), (emb_b, lin_b, theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(lin(emb(ids, offsets)), labels).backward()
            with torch.sparse.check_sparse_tensor_invariants(enable=False):
                opt.step()
    for a, b in zip(
        [*emb_a.parameters(), *lin_a.parameters()], [*emb_b.parameters(), *lin_b.parameters()]
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        ours.state[emb_a.weight]["sum"], theirs.state[emb_b.weight]["sum"], rtol=1e-6, atol=1e-6
    )
    assert (emb_a.weight[30:] == emb_b.weight[30:]).all()  # ids 30+ never drawn


def test_sgd_matches_torch_and_reports_flat_rate():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(10, 2))
    b = nn.Parameter(a.detach().clone())
    ours, theirs = SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    grad = sparse_grad([1, 3, 1], np.ones((3, 2), np.float32), (10, 2))
    a.grad, b.grad = grad, grad.clone()
    ours.step()
    theirs.step()
    torch.testing.assert_close(a, b)
    rates = ours.effective_lr(a).numpy()
    assert rates[1] == rates[3] == pytest.approx(0.1)
    assert np.isnan(np.delete(rates, [1, 3])).all()


def test_unique_rows_sums_duplicates():
    grad = sparse_grad([4, 1, 4, 4], np.arange(8, dtype=np.float32).reshape(4, 2), (6, 2))
    rows, values = unique_rows(grad)
    assert rows.tolist() == [1, 4]
    assert values.tolist() == [[2.0, 3.0], [0 + 4 + 6, 1 + 5 + 7]]


def test_effective_lr_of_a_row_range_costs_only_those_rows():
    p = nn.Parameter(torch.zeros(1000, 2))
    opt = Adagrad([p], lr=1.0)
    p.grad = sparse_grad([0, 5], np.ones((2, 2), np.float32), (1000, 2))
    opt.step()
    head = opt.effective_lr(p, slice(0, 10)).numpy()
    assert head.shape == (10,)
    assert head[0] == head[5] == pytest.approx(1.0)  # lr / sqrt(1)
    assert np.isnan(head[1])


def test_a_checkpoint_without_last_steps_still_loads(caplog):
    """Optimizer states saved before per-row last steps existed: updated rows get the
    checkpoint's step (exact for Adagrad without lr_decay), with a warning."""
    p = nn.Parameter(torch.zeros(6, 2))
    opt = Adagrad([p], lr=1.0)
    for rows in ([0, 1], [1, 2]):
        p.grad = sparse_grad(rows, np.ones((2, 2), np.float32), (6, 2))
        opt.step()
    saved = opt.state_dict()
    del saved["state"][0]["last_step"]
    fresh = Adagrad([p], lr=1.0)
    with caplog.at_level("WARNING"):
        fresh.load_state_dict(saved)
    assert "predates per-row last steps" in caplog.text
    assert fresh.state[p]["last_step"].tolist() == [2, 2, 2, 0, 0, 0]
    assert fresh.state[p]["last_step"].dtype == torch.int32
    # (the deleted key was `opt`'s own too: its rates come from torch ops, fresh's from C++)
    np.testing.assert_allclose(fresh.effective_lr(p).numpy(), opt.effective_lr(p).numpy(), 1e-15)


def _step_adagrad(fused, dim, padded, threads=1, steps=6, **kwargs):
    """After `steps` steps of Adagrad(fused=...) on a table with sparse gradients, a matrix
    and a vector with dense ones: the table, its accumulator and its two row counters, then
    the dense parameters and their accumulators."""
    gen = torch.Generator().manual_seed(dim)
    p = nn.Parameter(torch.randn(300, dim, generator=gen))
    dense = [nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((7, 3), (4,))]
    opt = Adagrad([p, *dense], fused=fused, **kwargs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            rows = torch.unique(torch.randint(0, 200, (120,), generator=gen))
            values = torch.randn(rows.numel(), dim, generator=gen) * 0.01
            if padded:  # the zero-padded form: the largest row repeated with zero rows
                rows = torch.cat([rows, rows[-1:].repeat(7)])
                values = torch.cat([values, values.new_zeros(7, dim)])
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape)
            setattr(p.grad, ZERO_PADDED, padded)
            for q in dense:
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()
    finally:
        torch.set_num_threads(previous)
    state = opt.state
    table = [p.detach(), state[p]["sum"]]
    if steps:
        table += [state[p]["updates"], state[p]["last_step"]]
    return table + [t for q in dense for t in (q.detach(), state[q]["sum"])]


@pytest.mark.parametrize("dim", [1, 5, 100])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=5.0),
        dict(lr=0.3, lr_decay=0.1, initial_accumulator_value=0.2, weight_decay=0.01),
        dict(lr=0.1, maximize=True, eps=1e-3),
    ],
)
def test_the_fused_adagrad_step_is_the_torch_ops_step(dim, padded, kwargs):
    native_kernels("true", "optim.fused")  # this test is about the kernel: it must build
    fused_w, fused_sum, *fused_counts, m, m_sum, v, v_sum = _step_adagrad(
        True, dim, padded, **kwargs
    )
    ops_w, ops_sum, *ops_counts, ops_m, ops_m_sum, ops_v, ops_v_sum = _step_adagrad(
        False, dim, padded, **kwargs
    )
    # a weight moves ~lr a step: the steps agree to 1e-6 of that (torch's sqrt is off by an ulp
    # now and then, ours is not), so a weight near 0 may differ by ~lr * 1e-7
    for got, want in ((fused_w, ops_w), (m, ops_m), (v, ops_v)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * kwargs["lr"])
    for got, want in ((fused_sum, ops_sum), (m_sum, ops_m_sum), (v_sum, ops_v_sum)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(fused_counts, ops_counts))  # updates, last step
    assert fused_counts[0].sum() > 0
    assert (fused_w[200:] == _step_adagrad(True, dim, padded, steps=0, **kwargs)[0][200:]).all()


def test_the_fused_step_gives_the_same_bits_on_any_number_of_threads():
    one = _step_adagrad(True, 64, False, threads=1, lr=0.5)
    two = _step_adagrad(True, 64, False, threads=2, lr=0.5)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("dim", [5, 19])  # rows narrower and wider than a vector register
@pytest.mark.parametrize("kwargs", [dict(lr=0.5), dict(lr=0.3, lr_decay=0.1, eps=1e-3)])
def test_the_native_rate_read_is_the_torch_ops_read(kwargs, dim):
    """Telemetry's one-pass C++ read of Adagrad's rates against the torch ops it replaces:
    rows by id (repeats, any order) and by slice, per row and per coordinate, with rows never
    updated, rows whose gradients were all zero, and coordinates that never got one."""
    from nlp_adagrad.optim.base import RowOptimizer

    native_kernels("true", "optim.fused")
    w = nn.Parameter(torch.randn(300, dim, generator=torch.Generator().manual_seed(0)))
    opt = Adagrad([w], **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(7):
        rows = torch.unique(torch.randint(0, 250, (90,), generator=gen))  # 250..299: never
        values = torch.randn(rows.numel(), dim, generator=gen)
        values[rows < 10] = 0  # rows 0..9: touched, zero second moment
        values[(rows >= 10) & (rows < 20), 2] = 0  # one coordinate that never moves
        w.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, w.shape, check_invariants=True)
        opt.step()
    ids = torch.cat([torch.randint(0, 300, (400,), generator=gen), torch.tensor([5, 15, 299])])
    for rows in (ids, slice(None), slice(40, 290)):
        for read, reference in (
            (opt.effective_lr, RowOptimizer.effective_lr),
            (opt.effective_lr_coords, RowOptimizer.effective_lr_coords),
        ):
            assert opt._native_read(w, rows, read == opt.effective_lr_coords) is not None
            got, want = read(w, rows), reference(opt, w, rows)
            assert got.dtype == want.dtype == torch.float64 and got.shape == want.shape
            assert torch.equal(got.isnan(), want.isnan()) and not got.isnan().all()
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)
    assert opt.effective_lr(w, torch.tensor([5, 299])).isnan().all()


def test_fused_true_without_a_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr(kernels, "_build", lambda: "gcc: not found")
    with pytest.raises(UserError, match=r"optim.fused=true but the C\+\+ kernels do not build"):
        Adagrad([nn.Parameter(torch.zeros(3, 2))], fused=True)
    assert Adagrad([nn.Parameter(torch.zeros(3, 2))])._kernels is None  # auto: torch ops


def test_without_a_compiler_each_setting_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_build", lambda: "gcc: not found")
    kernels._warn_fallback.cache_clear()
    with caplog.at_level("WARNING", logger="nlp_adagrad.kernels"):
        for _ in range(3):
            for setting in ("optim.fused", "task.kernel"):
                assert kernels.native_kernels("auto", setting) is None
    kernels._warn_fallback.cache_clear()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("gcc: not found" in line for line in lines), lines


def test_our_optimizers_never_import_torch_dynamo():
    # torch.optim.Optimizer's add_param_group, zero_grad and (load_)state_dict import it on
    # first call (1 s of start-up); ours call the functions underneath
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from nlp_adagrad.optim import Adagrad, SGD\n"
        "p = torch.nn.Parameter(torch.zeros(4, 2))\n"
        "for o in (Adagrad([p]), SGD([p], lr=0.1)):\n"
        "    p.grad = torch.ones(4, 2); o.step(); o.zero_grad()\n"
        "    o.load_state_dict(o.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_kernels_build_is_named_by_its_sources_not_their_folder(tmp_path, monkeypatch):
    copies = []
    for source in kernels.SOURCES:
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    name = kernels.build_name()
    monkeypatch.setattr(kernels, "SOURCES", copies)
    assert kernels.build_name() == name  # another checkout of the same sources: no rebuild
    copies[-1].write_bytes(copies[-1].read_bytes() + b"\n// changed\n")
    assert kernels.build_name() != name  # changed sources: a build of their own


def test_a_finished_build_is_imported_straight_from_its_file(tmp_path, monkeypatch):
    name = kernels.build_name()
    assert native_kernels("true", "optim.fused") is not None  # built (setup builds it)
    module = kernels._import_built(name)
    assert module is not None and hasattr(module, "adagrad_rows_")
    # elsewhere: nothing built yet, or a file cut short by an interrupted build -> rebuild
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert kernels._import_built(name) is None
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}.so").write_bytes(b"\x7fELF cut short")
    assert kernels._import_built(name) is None


def test_step_hooks_and_the_profiler_label_still_work_when_asked_for():
    # torch's wrapper around step (hooks, a profiler label) runs only when something needs it
    p = nn.Parameter(torch.zeros(3, 2))
    opt = Adagrad([p], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    p.grad = torch.ones(3, 2)
    opt.step()
    assert calls == ["pre", "post"]
    unhooked = Adagrad([p], lr=0.1)
    with torch.profiler.profile() as prof:
        unhooked.step()
        unhooked.zero_grad()
    names = {event.name for event in prof.events()}
    assert {"Optimizer.step#Adagrad.step", "Optimizer.zero_grad#Adagrad.zero_grad"} <= names
    assert p.grad is None
