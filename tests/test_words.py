"""Word vectors (task=skipgram, task=glove): gradients against hand-written NumPy references,
training pairs and co-occurrences against brute force, sparse steps that touch only the
batch's rows, exact resume, planted groups recovered (and not by random vectors), the
benchmark readers, vectors.txt read by gensim, and the neighbours command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nlp_adagrad.config import PlantedGroupsConfig
from nlp_adagrad.data import planted_groups, planted_groups_corpus
from nlp_adagrad.errors import UserError
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.models import GloVe, SkipGram
from nlp_adagrad.optim import Adagrad
from nlp_adagrad.run import TIMING_KEYS
from nlp_adagrad.train import train
from nlp_adagrad.vocab import EncodedSplit
from nlp_adagrad.words import evaluation
from nlp_adagrad.words.cooccurrence import cooccurrences
from nlp_adagrad.words.evaluation import VectorIndex, analogies, planted_precision, similarity
from nlp_adagrad.words.pairs import (
    epoch_stream,
    keep_probabilities,
    noise_table,
    pair_batch,
)
from nlp_adagrad.words.vectors import read_word2vec_text
from tests.helpers import at_thread_counts, make_config

# a planted corpus small enough for seconds: 2 levels x 3 groups x 3 words
PLANTED = [
    "data=planted",
    "data.group_counts=[30,90]",
    "data.groups_per_level=3",
    "data.group_size=3",
    "data.topic_words=6",
    "data.vocab_size=60",
    "tokenizer.min_count=1",
    "model.dim=16",
    "trainer.batch_size=256",
    "telemetry.every=5",
    "telemetry.rare_max_count=40",
    "telemetry.projector_tokens=0",
]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_skipgram_gradients_match_a_numpy_reference():
    torch.manual_seed(0)
    model = SkipGram(num_rows=7, dim=3)
    torch.nn.init.normal_(model.output.weight)  # zeros would hide the input gradient
    centres = torch.tensor([1, 2, 1, 5])  # centre 1 twice: its gradients add up
    targets = torch.tensor([[2, 3, 3], [1, 4, 6], [5, 2, 3], [1, 1, 2]])
    W_in, W_out = (t.detach().double().numpy() for t in (model.input.weight, model.output.weight))
    loss_ref, g_in, g_out = 0.0, np.zeros_like(W_in), np.zeros_like(W_out)
    for c, row in zip(centres.tolist(), targets.tolist()):
        for k, t in enumerate(row):
            label = 1.0 if k == 0 else 0.0
            s = W_in[c] @ W_out[t]
            loss_ref += -np.log(sigmoid(s)) if label else -np.log(sigmoid(-s))
            g = sigmoid(s) - label
            g_in[c] += g * W_out[t]
            g_out[t] += g * W_in[c]

    scores = model(centres, targets)
    loss = (
        torch.nn.functional.softplus(-scores[:, 0]).sum()
        + torch.nn.functional.softplus(scores[:, 1:]).sum()
    )
    loss.backward()
    autograd = {n: p.grad.to_dense().double().numpy() for n, p in model.named_parameters()}
    for name, ref in (("input.weight", g_in), ("output.weight", g_out)):
        np.testing.assert_allclose(autograd[name], ref, atol=1e-5)
    # the step's own paths: torch ops, and the C++ kernel (setup builds it; CI has gcc)
    for kernel in (None, native_kernels("cpp", "task.kernel")):
        model.zero_grad(set_to_none=True)
        fused_loss = model.loss_and_gradients(centres, targets, kernel)
        assert float(fused_loss) == pytest.approx(loss_ref, rel=1e-5)
        for name, ref in (("input.weight", g_in), ("output.weight", g_out)):
            grad = dict(model.named_parameters())[name].grad
            assert grad.is_coalesced()
            assert torch.equal(
                grad._indices()[0], torch.tensor(sorted(set(np.flatnonzero(ref.any(1)))))
            )
            np.testing.assert_allclose(grad.to_dense().double().numpy(), ref, atol=1e-5)
    assert loss.item() == pytest.approx(loss_ref, rel=1e-5)


def test_the_kernel_splits_pairs_over_threads_without_changing_the_gradients():
    # enough pairs for two chunks: each sums its own rows, added in chunk order
    kernel = native_kernels("cpp", "task.kernel")
    gen = torch.Generator().manual_seed(0)
    model = SkipGram(num_rows=500, dim=32)
    torch.nn.init.normal_(model.output.weight, std=0.1, generator=gen)
    centres = torch.randint(0, 500, (3000,), generator=gen)
    targets = torch.randint(0, 500, (3000, 6), generator=gen)

    def step() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss = model.loss_and_gradients(centres, targets, kernel)
        return [loss, *(t.grad.to_dense() for t in model.sparse_tables().values())]

    one, two, again = at_thread_counts(step)
    assert all(torch.equal(a, b) for a, b in zip(two, again))  # a thread count: fixed bits
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_glove_gradients_match_a_numpy_reference():
    torch.manual_seed(0)
    model = GloVe(num_rows=6, dim=4)
    rows, cols = torch.tensor([1, 2, 1, 4]), torch.tensor([2, 1, 3, 1])
    x = np.array([3.0, 3.0, 0.5, 20.0])
    x_max, alpha = 10.0, 0.75
    W, C = (t.detach().double().numpy() for t in (model.word.weight, model.context.weight))
    bw, bc = (
        t.detach().double().numpy()[:, 0]
        for t in (model.word_bias.weight, model.context_bias.weight)
    )
    loss_ref = 0.0
    grads = {k: np.zeros_like(v) for k, v in (("W", W), ("C", C), ("bw", bw), ("bc", bc))}
    for i, j, xij in zip(rows.tolist(), cols.tolist(), x):
        f = min(1.0, (xij / x_max) ** alpha)
        diff = W[i] @ C[j] + bw[i] + bc[j] - np.log(xij)
        loss_ref += 0.5 * f * diff**2
        grads["W"][i] += f * diff * C[j]
        grads["C"][j] += f * diff * W[i]
        grads["bw"][i] += f * diff
        grads["bc"][j] += f * diff
    f = torch.tensor(np.minimum(1.0, (x / x_max) ** alpha), dtype=torch.float32)
    residual = model(rows, cols) - torch.tensor(np.log(x), dtype=torch.float32)
    loss = 0.5 * (f * residual.square()).sum()
    loss.backward()
    assert loss.item() == pytest.approx(loss_ref, rel=1e-5)
    for name, ref in (("word", "W"), ("context", "C")):
        grad = getattr(model, name).weight.grad.to_dense().double().numpy()
        np.testing.assert_allclose(grad, grads[ref], atol=1e-5)
    for name, ref in (("word_bias", "bw"), ("context_bias", "bc")):
        grad = getattr(model, name).weight.grad.to_dense().double().numpy()[:, 0]
        np.testing.assert_allclose(grad, grads[ref], atol=1e-5)


@pytest.mark.parametrize("kind", ["skipgram", "glove"])
def test_a_step_changes_only_the_rows_in_the_batch(kind):
    torch.manual_seed(0)
    if kind == "skipgram":
        model = SkipGram(num_rows=50, dim=8)
        torch.nn.init.normal_(model.output.weight)
        centres, targets = torch.tensor([3, 7, 3]), torch.tensor([[4, 9], [3, 11], [20, 4]])
        touched = {"input": {3, 7}, "output": {4, 9, 3, 11, 20}}
    else:
        model = GloVe(num_rows=50, dim=8)
        centres, targets = torch.tensor([3, 7]), torch.tensor([4, 3])
        touched = {"word": {3, 7}, "context": {4, 3}, "word_bias": {3, 7}, "context_bias": {4, 3}}
    before = {n: t.detach().clone() for n, t in model.sparse_tables().items()}
    optimizer = Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=1.0)
    if kind == "skipgram":
        model.loss_and_gradients(centres, targets, native_kernels("auto", "task.kernel"))
    else:
        (model(centres, targets) - 1.0).square().sum().backward()
    optimizer.step()
    for name, table in model.sparse_tables().items():
        changed = set(torch.nonzero((table != before[name]).any(dim=1)).flatten().tolist())
        assert changed == touched[name], name


def test_pairs_stay_in_their_document_and_window():
    # two documents: ids 1..6 and 7..9 (every id distinct, so a pair names its positions)
    split = EncodedSplit(ids=np.arange(1, 10), offsets=np.array([0, 6, 9]), labels=None)
    keep = np.ones(10)
    stream = epoch_stream(split, keep, seed=0, epoch=0)
    batch = pair_batch(
        stream, 0, batch_size=9, window=2, negative=3, noise=np.array([1, 2]), seed=0, epoch=0
    )
    doc_of = {i: 0 if i <= 6 else 1 for i in range(1, 10)}
    position = {int(t): k for k, t in enumerate(stream.ids)}
    for c, row in zip(batch.centres.tolist(), batch.targets.tolist()):
        assert doc_of[c] == doc_of[row[0]] and c != row[0]
        assert 1 <= abs(position[c] - position[row[0]]) <= 2
        assert set(row[1:]) <= {1, 2}
    # the window each side is drawn from 1..2: every adjacent pair is always there
    pairs = set(zip(batch.centres.tolist(), batch.targets[:, 0].tolist()))
    for a, b in zip(stream.ids[:-1].tolist(), stream.ids[1:].tolist()):
        if doc_of[a] == doc_of[b]:
            assert (a, b) in pairs and (b, a) in pairs


def test_subsampling_and_noise_follow_word2vec():
    counts = np.array([0, 1000, 100, 10, 1])
    keep = keep_probabilities(counts, sample=1e-2)
    t = 1e-2 * counts.sum()
    np.testing.assert_allclose(keep[1], (np.sqrt(1000 / t) + 1) * t / 1000)
    assert keep[0] == 1 and keep[4] == 1 and keep[1] < keep[2] < 1
    table = noise_table(counts)
    drawn = np.bincount(table, minlength=5) / len(table)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(drawn, expected, atol=1e-5)


def test_cooccurrences_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 6, size=40)
    offsets = np.array([0, 15, 15, 40])  # an empty document in the middle
    split = EncodedSplit(ids=ids, offsets=offsets, labels=None)
    entries = cooccurrences(split, window=3, num_rows=6)
    expected = np.zeros((6, 6))
    for a, b in zip(offsets[:-1], offsets[1:]):
        doc = ids[a:b]
        for i in range(len(doc)):
            for j in range(i + 1, min(i + 4, len(doc))):
                expected[doc[i], doc[j]] += 1 / (j - i)
                expected[doc[j], doc[i]] += 1 / (j - i)
    got = np.zeros((6, 6))
    got[entries.rows, entries.cols] = entries.counts
    np.testing.assert_allclose(got, expected)
    assert (entries.counts > 0).all()


def test_similarity_and_analogies_count_what_is_left_out():
    words = ["king", "queen", "man", "woman", "apple"]
    vectors = np.array([[1, 1, 0], [1, -1, 0], [0, 1, 0.1], [0, -1, 0.1], [5, 0, 5]], dtype=float)
    index = VectorIndex.build(words, vectors, np.array([50, 40, 30, 20, 10]), lowercase=True)
    pairs = [("king", "queen", 3.0), ("man", "woman", 2.0), ("king", "apple", 1.0), ("x", "y", 9.0)]
    out = similarity(index, pairs)
    assert out["oov"] == 0.25 and out["pairs"] == 3
    assert out["rho"] == pytest.approx(-0.5)  # cosines 0, -0.98, 0.5 against 3, 2, 1
    result = analogies(
        index, [("man", "king", "woman", "queen"), ("man", "KING", "zebra", "queen")]
    )
    assert result == {"oov": 0.5, "questions": 1.0, "accuracy": 1.0}


def test_benchmark_files_are_read_from_the_gensim_wheel():
    ws = evaluation.read_pairs(evaluation.benchmark_path("wordsim353.tsv"))
    simlex = evaluation.read_pairs(evaluation.benchmark_path("simlex999.txt"))
    questions = evaluation.read_analogies(evaluation.benchmark_path("questions-words.txt"))
    assert (len(ws), len(simlex), len(questions)) == (353, 999, 19544)


def test_planted_precision_is_exact_truth_that_random_vectors_fail():
    cfg = PlantedGroupsConfig(group_counts=[5], groups_per_level=20, group_size=5)
    groups = planted_groups(cfg)
    words = [w for group, _ in groups for w in group]
    rng = np.random.default_rng(0)
    random_index = VectorIndex.build(words, rng.normal(size=(100, 32)), np.ones(100), True)
    assert planted_precision(random_index, groups)["eval/planted/precision/count_5"] < 0.15
    centres = np.repeat(rng.normal(size=(20, 32)), 5, axis=0)
    clustered = VectorIndex.build(
        words, centres + 0.01 * rng.normal(size=(100, 32)), np.ones(100), True
    )
    assert planted_precision(clustered, groups)["eval/planted/precision/count_5"] == 1.0
    texts, group = planted_groups_corpus(cfg)
    assert len(texts) == 100 * 5 and all(len(t.split()) == cfg.sentence_length for t in texts)
    middle = [t.split()[cfg.sentence_length // 2] for t in texts]
    assert all(m.startswith(f"g{g}x") for m, g in zip(middle, group))


def test_skipgram_recovers_planted_groups_and_writes_its_files(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(make_config("task=skipgram", *PLANTED, "trainer.epochs=8"), run_dir)
    for count in (30, 90):  # random vectors: 2 / 8 = 0.25
        assert metrics[f"eval/planted/precision/count_{count}"] >= 0.8, metrics
    assert metrics["eval/ws353/oov"] == 1.0  # no benchmark word in this corpus: all left out
    for name in ("vectors.txt", "token_stats.csv", "token_stats_output.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(str(run_dir / "vectors.txt"))
    words, vectors = read_word2vec_text(run_dir / "vectors.txt")
    assert kv.index_to_key == words and "[UNK]" not in words
    np.testing.assert_allclose(kv.vectors, vectors)
    # both tables' rates, tagged by table; the plain keys are the input table's
    assert metrics["eff_lr/rare"] == metrics["eff_lr/input/rare"] > metrics["eff_lr/common"]
    assert np.isfinite(metrics["eff_lr/output/common"])


def test_glove_trains_and_reports_per_table_rates(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(
        make_config("task=glove", *PLANTED, "task.window=5", "trainer.epochs=3"), run_dir
    )
    assert metrics["train/cooccurrences"] > 0 and np.isfinite(metrics["train/loss"])
    assert {"eff_lr/word/rare", "eff_lr/context/rare"} <= set(metrics)
    assert (run_dir / "vectors.txt").is_file() and (run_dir / "token_stats_context.csv").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tb").iterdir())))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for table in ("word", "context"):
        assert {f"eff_lr_log10/{table}/rare", f"eff_lr/{table}/slope_vs_updates"} <= scalars
        assert f"eff_lr_log10_hist/{table}/count_1e1" in events.Tags()["histograms"]
    assert "eff_lr/rare" not in scalars  # several tables: every rate tag names its table
    assert "eval/planted/precision/count_30" in scalars  # ws353: all out of vocabulary, NaN


def without_timing(metrics: dict) -> str:
    """The metrics as text (NaN compares equal there), the machine's timings left out."""
    return json.dumps({k: v for k, v in metrics.items() if k not in TIMING_KEYS}, sort_keys=True)


@pytest.mark.parametrize("task", ["skipgram", "glove"])
def test_resuming_from_a_checkpoint_is_bit_identical(tmp_path, task):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir()
    resumed.mkdir()
    common = [f"task={task}", *PLANTED, "trainer.epochs=2", "trainer.keep_checkpoints=100"]
    end = train(make_config(*common, "trainer.checkpoint_every=4"), whole)
    middle = sorted((whole / "checkpoints").glob("step_*.pt"))[1]  # step 8: mid-epoch
    again = train(make_config(*common, f"trainer.resume={middle}"), resumed)
    assert without_timing(again) == without_timing(end)
    a = torch.load(whole / "checkpoints/last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints/last.pt", weights_only=True)
    torch.testing.assert_close(a["model"], b["model"], rtol=0, atol=0)
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)
    assert (whole / "vectors.txt").read_bytes() == (resumed / "vectors.txt").read_bytes()


def test_a_classifier_cannot_train_word_vectors_and_back():
    with pytest.raises(UserError, match="task=skipgram trains model=skipgram"):
        make_config("task=skipgram", "model=fasttext")
    with pytest.raises(UserError, match="tokenizer.ngrams must be 1"):
        make_config("task=glove", "tokenizer.ngrams=2")


def neighbors_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.neighbors", *args], capture_output=True, text=True
    )


def test_neighbors_command(tmp_path):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("4 2\nparis 1 0.1\nfrance 0 1\nberlin 1 -0.1\ngermany 0 -1\n")
    done = neighbors_cli(
        str(vectors), "Paris", "-k", "1", "--analogy", "berlin", "germany", "france"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "nearest to Paris:",
        "  berlin                   0.9802",
        "berlin - germany + france:",
        "  paris                    0.5497",
    ]
    missing = neighbors_cli(str(vectors), "rome")
    assert missing.returncode == 2 and "not in the vocabulary: rome" in missing.stderr
    assert neighbors_cli(str(tmp_path / "nothing"), "x").returncode == 2
    stdin = subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.neighbors", str(vectors), "-k", "1"],
        input="france\n",
        capture_output=True,
        text=True,
    )
    assert stdin.stdout.splitlines()[1].split()[0] == "paris"


def test_predict_refuses_a_word_vector_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(make_config("task=skipgram", *PLANTED, "trainer.max_steps=3"), run_dir)
    done = subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.predict", str(run_dir)],
        input="a line\n",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "nlp_adagrad.neighbors" in done.stderr


def test_skipgram_reads_a_local_plain_text_file(tmp_path):
    """A user's text (text8-like): plain lines, no __label__ tags, one document per line."""
    lines = [" ".join(f"w{(i * 7 + j) % 40}" for j in range(30)) for i in range(60)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = make_config(
        "task=skipgram",
        "data=local",
        f"data.path={tmp_path / 'corpus.txt'}",
        "tokenizer.min_count=1",
        "model.dim=8",
        "trainer.batch_size=200",
        "trainer.epochs=1",
        "telemetry.projector_tokens=20",
    )
    metrics = train(cfg, run_dir)
    assert metrics["train/tokens"] == 60 * 30  # every word of every line, once
    words, _ = read_word2vec_text(run_dir / "vectors.txt")
    assert sorted(words) == sorted(f"w{i}" for i in range(40))
    metadata = next(run_dir.glob("tb/*/*/token_table/metadata.tsv")).read_text().splitlines()
    assert metadata[0].split("\t") == ["token", "count", "bucket", "eff_lr", "log10_eff_lr"]
    assert len(metadata) == 21


def test_a_word_run_is_named_by_its_model_not_by_its_task_key():
    from nlp_adagrad.run_info import run_name

    cfg = make_config("task=skipgram", "optim=sgd", "task.window=10")
    name = run_name(cfg, ["task=skipgram", "optim=sgd", "task.window=10"])
    assert name == "bbc_news,skipgram-d100,sgd,lr=0.025,task.window=10"


def test_glove_on_text_where_no_two_words_meet_is_refused_in_one_line(tmp_path):
    (tmp_path / "words.txt").write_text("\n".join(f"w{i % 5}" for i in range(50)) + "\n")
    cfg = make_config(
        "task=glove", "data=local", f"data.path={tmp_path / 'words.txt'}", "tokenizer.min_count=1"
    )
    with pytest.raises(UserError, match="no two vocabulary words share a window of 15"):
        train(cfg, tmp_path)
