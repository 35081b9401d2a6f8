"""Corpora: BBC News as DESIGN §6 describes it, the split datasets itself would draw, and the
synthetic corpus's planted labels."""

from __future__ import annotations

import datasets
import numpy as np

from nlp_adagrad.config import BBCNewsConfig, SyntheticDataConfig
from nlp_adagrad.data import _split, load_corpus, synthetic_corpus


def test_bbc_news_is_deduplicated_split_stratified_and_seeded():
    corpus = load_corpus(BBCNewsConfig())
    texts = list(corpus["train"]["text"]) + list(corpus["test"]["text"])
    assert len(texts) == 2225 - 98 and len(set(texts)) == len(texts)  # duplicates dropped
    names = corpus["train"].features["label"].names
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    train = np.bincount(corpus["train"]["label"]) / len(corpus["train"])
    test = np.bincount(corpus["test"]["label"]) / len(corpus["test"])
    assert np.abs(train - test).max() < 0.01  # stratified
    assert load_corpus(BBCNewsConfig())["test"]["text"] == corpus["test"]["text"]
    assert load_corpus(BBCNewsConfig(seed=1))["test"]["text"] != corpus["test"]["text"]


def test_split_draws_the_same_indices_as_datasets_train_test_split():
    rng = np.random.default_rng(0)
    full = datasets.Dataset.from_dict(
        {"text": [f"doc {i}" for i in range(500)], "label": rng.integers(0, 3, 500).tolist()},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        ),
    )
    cfg = SyntheticDataConfig(test_fraction=0.3, seed=7)
    ours = _split(full, cfg)
    theirs = full.train_test_split(test_size=0.3, stratify_by_column="label", seed=7)
    for split in ("train", "test"):
        assert ours[split]["text"] == theirs[split]["text"]
    # also on a selected view, whose rows are not the underlying table's
    view = full.select(range(499, -1, -2))
    ours = _split(view, cfg)
    theirs = view.train_test_split(test_size=0.3, stratify_by_column="label", seed=7)
    for split in ("train", "test"):
        assert ours[split]["text"] == theirs[split]["text"]


def test_synthetic_corpus_is_seeded_and_its_planted_labels_are_learnable():
    cfg = SyntheticDataConfig(
        vocab_size=300, num_docs=400, doc_length=50, num_classes=3, label_noise=0.0
    )
    texts, labels, class_of_type = synthetic_corpus(cfg)
    again = synthetic_corpus(cfg)
    assert texts == again[0] and (labels == again[1]).all()
    # the planted rule (majority vote of signal tokens) reproduces every noise-free label
    votes = np.zeros((len(texts), 3))
    for d, text in enumerate(texts):
        for word in text.split():
            c = class_of_type[int(word[1:])]
            if c >= 0:
                votes[d, c] += 1
    decided = votes.max(axis=1) > np.sort(votes, axis=1)[:, -2]
    assert (votes.argmax(axis=1)[decided] == labels[decided]).all()
    rare_signal = class_of_type[150:] >= 0  # rare types carry signal too
    assert 0.1 < rare_signal.mean() < 0.3


def _write_formats(folder):
    """The tiny corpus as csv, tsv, fastText text and json lines, each also gzip- and xz-packed."""
    import gzip
    import json
    import lzma

    from tests.helpers import tiny_rows

    rows = tiny_rows()
    texts = {
        "d.csv": "text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows),
        "d.tsv": "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows),
        "d.txt": "".join(f"__label__{r['label']} {r['text']}\n" for r in rows),
        "d.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
    }
    paths = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        (folder / f"{name}.gz").write_bytes(gzip.compress(text.encode()))
        (folder / f"{name}.xz").write_bytes(lzma.compress(text.encode()))
        paths += [folder / name, folder / f"{name}.gz", folder / f"{name}.xz"]
    return paths


def test_the_format_comes_from_the_file_name_compressed_or_not(tmp_path):
    from nlp_adagrad.config import LocalDataConfig

    reference = None
    for path in _write_formats(tmp_path):
        corpus = load_corpus(LocalDataConfig(path=str(path)))  # data.format=auto
        got = (corpus["train"]["text"], corpus["train"]["label"], corpus["test"]["text"])
        reference = reference or got
        assert got == reference, path.name  # every file gives the same corpus


def test_a_name_that_says_no_format_and_an_untagged_txt_say_what_to_do(tmp_path):
    import pytest

    from nlp_adagrad.config import LocalDataConfig
    from nlp_adagrad.errors import UserError

    (tmp_path / "data.dat").write_text("text,label\na,b\n")
    with pytest.raises(UserError, match="cannot tell the format .* set data.format="):
        load_corpus(LocalDataConfig(path=str(tmp_path / "data.dat")))
    (tmp_path / "plain.txt").write_text("just words, no tags\n")
    with pytest.raises(UserError, match="first line has no __label__ tag"):
        load_corpus(LocalDataConfig(path=str(tmp_path / "plain.txt")))


def test_a_blank_text_cell_is_an_empty_document_for_the_word_tasks(tmp_path):
    # tokenizers' trainer and encoder both refuse None: it stopped word runs with a traceback
    from nlp_adagrad.config import LocalDataConfig, TokenizerConfig
    from nlp_adagrad.data import load_texts
    from nlp_adagrad.token_cache import tokenize_corpus

    path = tmp_path / "texts.csv"
    path.write_text("text,label\nhello world,a\n,b\ngood day,a\n")
    texts = load_texts(LocalDataConfig(path=str(path)))
    assert texts["text"] == ["hello world", "", "good day"]
    for kernel in ("tokenizers", "cpp"):
        cfg = TokenizerConfig(kernel=kernel, cache=False)
        split = tokenize_corpus(datasets.DatasetDict(train=texts), cfg).train
        assert split.lengths.tolist() == [2, 0, 2]
