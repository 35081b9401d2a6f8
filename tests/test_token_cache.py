"""The token cache: a second run on the same corpus and settings reads the ids back, identical,
without training or tokenizing; anything that changes the ids misses; damage is repaired."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest

from nlp_adagrad import token_cache, vocab
from nlp_adagrad.config import TokenizerConfig
from tests.helpers import tiny_rows


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf" / "nlp_adagrad"


def corpus(extra: str = "") -> datasets.DatasetDict:
    rows = tiny_rows()
    texts = [r["text"] + extra for r in rows]
    labels = [0 if r["label"] == "sport" else 1 for r in rows]
    full = datasets.Dataset.from_dict({"text": texts, "label": labels})
    full = full.cast_column("label", datasets.ClassLabel(names=["sport", "business"]))
    return datasets.DatasetDict(train=full.select(range(30)), test=full.select(range(30, 48)))


def forbid_tokenizing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tokenized although the cache holds the ids")

    monkeypatch.setattr(token_cache, "train_vocabulary", refuse)
    monkeypatch.setattr(vocab, "_encode_batch", refuse)


def assert_same(a: token_cache.Tokenized, b: token_cache.Tokenized) -> None:
    assert a.tokenizer.json == b.tokenizer.json and a.tokens == b.tokens
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        for field in ("ids", "offsets", "labels"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


@pytest.mark.filterwarnings("error::UserWarning")  # none for the user (read-only ids)
def test_second_call_reads_identical_ids_without_tokenizing(monkeypatch, own_cache):
    cfg = TokenizerConfig(ngrams=2, buckets=50)
    first = token_cache.tokenize_corpus(corpus(), cfg)
    assert not first.cache_hit and first.cache_dir.parent == own_cache
    forbid_tokenizing(monkeypatch)
    second = token_cache.tokenize_corpus(corpus(), cfg)
    assert second.cache_hit and second.cache_dir == first.cache_dir
    assert_same(first, second)
    # bigram settings are applied after the cache: another bucket count reuses the entry
    other = token_cache.tokenize_corpus(corpus(), TokenizerConfig(ngrams=2, buckets=70))
    assert other.cache_hit and other.train.ids.max() >= other.tokenizer.num_words


@pytest.mark.parametrize(
    "change",
    [
        lambda: (corpus(" extra"), TokenizerConfig()),
        lambda: (corpus(), TokenizerConfig(min_count=2)),
        lambda: (corpus(), TokenizerConfig(lowercase=False)),
        lambda: (corpus(), TokenizerConfig(max_vocab=5)),
    ],
    ids=["text", "min_count", "lowercase", "max_vocab"],
)
def test_anything_that_changes_the_ids_misses(change):
    base = token_cache.tokenize_corpus(corpus(), TokenizerConfig())
    data, cfg = change()
    changed = token_cache.tokenize_corpus(data, cfg)
    assert not changed.cache_hit and changed.cache_dir != base.cache_dir


@pytest.mark.parametrize("damaged", ["tokenizer.json", "train.arrow"])
def test_a_damaged_entry_is_reported_and_rebuilt(damaged, caplog):
    good = token_cache.tokenize_corpus(corpus(), TokenizerConfig())
    path = good.cache_dir / damaged
    path.write_bytes(path.read_bytes()[:40])  # truncated, as a full disk or a kill leaves it
    with caplog.at_level(logging.WARNING, logger="nlp_adagrad.token_cache"):
        rebuilt = token_cache.tokenize_corpus(corpus(), TokenizerConfig())
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert not rebuilt.cache_hit
    assert_same(good, rebuilt)
    assert token_cache.tokenize_corpus(corpus(), TokenizerConfig()).cache_hit  # repaired


def test_cache_off_writes_nothing(own_cache):
    cached = token_cache.tokenize_corpus(corpus(" off"), TokenizerConfig(cache=False))
    assert cached.cache_dir is None and not own_cache.exists()


def test_an_unwritable_cache_is_reported_and_the_run_tokenizes_without_it(
    tmp_path, monkeypatch, caplog
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(token_cache, "cache_root", lambda: blocker / "nlp_adagrad")
    with caplog.at_level(logging.WARNING, logger="nlp_adagrad.token_cache"):
        got = token_cache.tokenize_corpus(corpus(), TokenizerConfig())
    assert "cannot write the token cache" in caplog.text and got.cache_dir is None
    assert "unreadable" not in caplog.text  # nothing was there to read: one warning, not two
    expected = token_cache.tokenize_corpus(corpus(), TokenizerConfig(cache=False))
    assert_same(got, expected)
