"""End-to-end training runs on small corpora: every DESIGN §4 file, the DESIGN §5 TensorBoard
tags read back with EventAccumulator, and same config + seed -> identical results."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tokenizers import Tokenizer

from nlp_adagrad.batching import batch_indices, epoch_order, make_batch
from nlp_adagrad.data import load_corpus
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.run import TIMING_KEYS
from nlp_adagrad.telemetry import TOKEN_STATS_COLUMNS
from nlp_adagrad.train import train
from nlp_adagrad.vocab import encode_split, token_counts
from tests.helpers import make_config

RUN_FILES = [
    "tokenizer.json",
    "metrics.json",
    "token_stats.csv",
    "checkpoints/last.pt",
    "eff_lr_vs_count.png",
    "tb",
]
METRIC_KEYS = [
    "test/accuracy",
    "test/loss",
    "train/loss",
    "train/steps",
    "train/tokens",
    "train/tokens_per_sec",
    "eff_lr/rare",
    "eff_lr/common",
    "eff_lr/slope_vs_updates",
    "eff_lr/slope_vs_count",
    "eff_lr/rare_first",
    "eff_lr/common_first",
    "eff_lr/rare_to_common",
    "eff_lr/rare_to_common_first",
]
BBC_SMALL = ["+experiment=debug"]  # conf/experiment/debug.yaml


def read_tb(run_dir: Path) -> EventAccumulator:
    """The run's TensorBoard events: tb/<run name>/, the one folder under tb/."""
    (logdir,) = (run_dir / "tb").iterdir()
    acc = EventAccumulator(
        str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}
    )
    acc.Reload()
    return acc


def check_run_dir(run_dir: Path, metrics: dict) -> None:
    for name in RUN_FILES:
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in saved, key
    assert saved["train/steps"] == metrics["train/steps"] > 0
    ckpt = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert {"model", "optimizer", "step", "config"} <= set(ckpt)
    assert ckpt["step"] == saved["train/steps"]
    with open(run_dir / "token_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == TOKEN_STATS_COLUMNS
    tokens = json.loads((run_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(rows) == len(tokens)
    for row in rows:
        # never updated -> no rate; updated -> a rate, unless every gradient it got was
        # exactly zero (a saturated softmax), which these smoke runs do not reach
        assert (row["eff_lr"] == "") == (int(row["updates"]) == 0)
        assert int(row["updates"]) <= saved["train/steps"]
        if row["eff_lr"]:  # the row rate lies within its coordinates' rates
            low, rate, high = (
                float(row[k]) for k in ("eff_lr_coord_min", "eff_lr", "eff_lr_coord_max")
            )
            assert low * (1 - 1e-6) <= rate <= high * (1 + 1e-6)


def test_bbc_news_slice_writes_every_file_and_tag(tmp_path):
    cfg = make_config(*BBC_SMALL, "telemetry.tokens=[the]")
    metrics = train(cfg, tmp_path)
    check_run_dir(tmp_path, metrics)
    acc = read_tb(tmp_path)
    assert acc.path.endswith("tb/bbc_news,logreg,adagrad,lr=5")  # a name that says what ran
    scalars = set(acc.Tags()["scalars"])
    for tag in [
        "train/loss",
        "test/accuracy",
        "eff_lr/rare",
        "eff_lr/common",
        "eff_lr_log10/rare",
        "eff_lr_log10/common",
        "eff_lr/rare_to_common",
        "eff_lr/slope_vs_updates",
        "eff_lr/slope_vs_count",
        "train/tokens_per_sec",
        "eff_lr/token/the",
    ]:
        assert tag in scalars, tag
    buckets = {t.rsplit("/", 1)[1] for t in scalars if t.startswith("eff_lr/bucket/")}
    tokens = {t for t in scalars if t.startswith("eff_lr/token/")}
    assert len(buckets) >= 3 and 12 <= len(tokens) <= 60  # a few dozen, never the vocabulary
    assert {f"eff_lr_log10/bucket/{b}" for b in buckets} <= scalars
    assert set(acc.Tags()["histograms"]) == {
        f"eff_lr_log10{kind}_hist/{b}" for b in buckets for kind in ("", "_coord")
    }
    assert "eff_lr/vs_updates_and_count" in acc.Tags()["images"]
    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    # snapshots catch the adaptation: log-spaced from step 1 (telemetry.every=5 here)
    steps = [e.step for e in acc.Scalars("eff_lr/rare")]
    assert steps[:4] == [1, 2, 3, 5] and steps[-1] == metrics["train/steps"]
    assert metrics["eff_lr/first_snapshot_step"] == 1
    # the story the product tells: rare tokens keep larger rates than common ones, and the
    # gap opens during training
    assert metrics["eff_lr/rare"] > 10 * metrics["eff_lr/common"]
    assert metrics["eff_lr/rare_to_common"] > 2 * metrics["eff_lr/rare_to_common_first"]
    bucket_tokens = sum(
        v for k, v in metrics.items() if k.startswith("bucket/") and k.endswith("/tokens")
    )
    assert bucket_tokens == metrics["eff_lr/tokens_updated"]  # every trained token, one bucket
    assert metrics["test/accuracy"] > 0.8


def test_local_csv_and_json(tmp_path, tiny_csv, tiny_jsonl):
    for path, extra in (
        (tiny_csv, ["data.format=csv", "data.text_column=body", "data.label_column=topic"]),
        (tiny_jsonl, ["data.format=json"]),
    ):
        run_dir = tmp_path / path.suffix[1:]
        run_dir.mkdir()
        cfg = make_config(
            "data=local",
            f"data.path={path}",
            "data.test_fraction=0.25",
            "trainer.epochs=20",
            "trainer.batch_size=4",
            *extra,
        )
        metrics = train(cfg, run_dir)
        check_run_dir(run_dir, metrics)
        assert metrics["test/accuracy"] >= 0.9  # the two topics share no content words


def test_fasttext_model_with_bigrams_on_synthetic(tmp_path):
    cfg = make_config(
        "data=synthetic",
        "data.num_docs=400",
        "data.vocab_size=500",
        "model=fasttext",
        "model.dim=8",
        "optim.lr=0.5",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=1000",
        "trainer.epochs=3",
    )
    metrics = train(cfg, tmp_path)
    check_run_dir(tmp_path, metrics)
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    assert ckpt["model"]["embedding.weight"].shape == (len(vocab) + 1000, 8)
    assert metrics["test/accuracy"] > 0.5  # 4 classes: chance is 0.25


def test_same_config_and_seed_give_identical_results(tmp_path, caplog):
    """Also across the token cache: tokenized afresh, cached, and read back from the cache."""
    outputs = []
    for name, cache in (("fresh", "false"), ("fills_cache", "true"), ("reads_cache", "true")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nlp_adagrad.train"):
            cfg = make_config(*BBC_SMALL, "trainer.num_threads=1", f"tokenizer.cache={cache}")
            metrics = train(cfg, run_dir)
        outputs.append(
            (
                {k: v for k, v in metrics.items() if k not in TIMING_KEYS},
                (run_dir / "token_stats.csv").read_bytes(),
            )
        )
    assert "token ids read from the cache" in caplog.text  # the last run did not tokenize
    for other in outputs[1:]:
        assert other[0] == outputs[0][0]
        assert other[1] == outputs[0][1]


def test_resume_continues_from_a_checkpoint(tmp_path, caplog):
    first, second, whole = tmp_path / "first", tmp_path / "second", tmp_path / "whole"
    for d in (first, second, whole):
        d.mkdir()
    base = ["data.max_examples=200", "trainer.epochs=2", "trainer.num_threads=1"]
    steps = train(make_config(*base), whole)["train/steps"]
    train(make_config(*base, f"trainer.max_steps={steps // 2 + 1}"), first)
    # where token ids come from is no config difference worth a warning
    with caplog.at_level(logging.WARNING, logger="nlp_adagrad"):
        cfg = make_config(*base, f"trainer.resume={first}", "tokenizer.cache=false")
        resumed = train(cfg, second)
    assert "different" not in caplog.text
    assert resumed["train/steps"] == steps
    a = torch.load(whole / "checkpoints/last.pt", weights_only=True)
    b = torch.load(second / "checkpoints/last.pt", weights_only=True)
    torch.testing.assert_close(a["model"], b["model"], rtol=0, atol=0)


@pytest.mark.parametrize("model", ["logreg", "fasttext"])
def test_untouched_rows_never_change(tmp_path, model):
    """Bigram buckets no training pair hashed to keep their initial values, bit for bit."""
    cfg = make_config(
        "data.max_examples=50",
        "trainer.epochs=1",
        f"model={model}",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=50000",
        "telemetry.every=0",
    )
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    table = ckpt["model"]["embedding.weight"]
    torch.manual_seed(cfg.trainer.seed)  # the trainer's initialisation, replayed
    initial = build_model(cfg.model, table.shape[0], num_classes=5)
    optimizer = build_optimizer(cfg.optim, initial.parameters(), total_steps=1)
    optimizer.load_state_dict(ckpt["optimizer"])
    untouched = optimizer.row_updates(initial.embedding.weight) == 0
    assert untouched.sum() > 10_000
    assert torch.equal(table[untouched], initial.embedding.weight.detach()[untouched])
    assert not torch.equal(table[~untouched], initial.embedding.weight.detach()[~untouched])


def test_updates_and_counts_match_a_replay_of_the_batches_bigram_rows_included(tmp_path):
    cfg = make_config(
        "data.max_examples=60",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=3000",
        "telemetry.every=0",
    )
    train(cfg, tmp_path)
    # replay the trainer's data path and count by hand
    corpus = load_corpus(cfg.data)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    split = encode_split(corpus["train"], tokenizer, cfg.tokenizer)
    num_rows = tokenizer.get_vocab_size() + 3000
    expected = np.zeros(num_rows, dtype=np.int64)
    for epoch in range(cfg.trainer.epochs):
        for docs in batch_indices(epoch_order(split.num_docs, cfg.trainer.seed, epoch), 8):
            expected[np.unique(make_batch(split, docs).ids.numpy())] += 1
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    model = build_model(cfg.model, num_rows, num_classes=5)
    optimizer = build_optimizer(cfg.optim, model.parameters(), total_steps=1)
    optimizer.load_state_dict(ckpt["optimizer"])
    updates = optimizer.row_updates(model.embedding.weight).numpy()
    assert updates[tokenizer.get_vocab_size() :].sum() > 0  # bigram rows were trained
    np.testing.assert_array_equal(updates, expected)
    with open(tmp_path / "token_stats.csv", newline="") as f:
        counts = [int(row["count"]) for row in csv.DictReader(f)]
    assert counts == token_counts(split, num_rows)[: len(counts)].tolist()
