"""Tokenize a corpus once: the trained tokenizer and its splits' token ids, kept across runs.

An entry lives in datasets' cache folder (`$HF_DATASETS_CACHE/nlp_adagrad/<key>`), keyed by the
splits' datasets fingerprints (content hashes for in-memory corpora, file hashes for loaded
ones) and the tokenizer settings that shape the ids. It holds `tokenizer.json` and the Arrow
files `datasets.map` writes for each split; a later run with the same corpus and settings reads
them back memory-mapped instead of training and tokenizing again (a sweep over optimizers or
learning rates tokenizes once). Bigrams are hashed from the word ids on every run, so
`tokenizer.ngrams` and `tokenizer.buckets` do not split the cache.

Writes are atomic (datasets renames its files into place, we rename the tokenizer), so
parallel runs may fill the same entry. A damaged entry is reported, removed and rebuilt; a
cache that cannot be written is reported and the run tokenizes without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import tokenizers

from nlp_adagrad.config import TokenizerConfig
from nlp_adagrad.errors import UserError, one_line
from nlp_adagrad.vocab import (
    EncodedSplit,
    TrainedVocabulary,
    WordIds,
    WordTokenizer,
    encode_split,
    token_counts,
    train_vocabulary,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the tokenizer recipe or the cached layout changes (2: compact JSON)


@dataclass
class Tokenized:
    tokenizer: WordTokenizer
    train: EncodedSplit
    test: EncodedSplit | None  # None for a corpus without a test split (word vectors)
    cache_dir: Path | None  # the entry used, None with tokenizer.cache=false
    cache_hit: bool
    counted: np.ndarray | None = None  # train_word_counts, where the word kernel counted them

    @property
    def tokens(self) -> list[str]:
        """The vocabulary in id order."""
        return self.tokenizer.tokens

    def train_word_counts(self, cfg: TokenizerConfig) -> np.ndarray:
        """Each word id's occurrences in the training split (not the bigram buckets'): as
        the word kernel counted them while training the tokenizer (the same numbers, tested),
        else counted from the ids (read from the cache, or tokenizers' encoding)."""
        if self.counted is not None:
            return self.counted
        return token_counts(self.train, len(self.tokens), cfg, words_only=True)


def cache_root() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "nlp_adagrad"


def cache_key(corpus: datasets.DatasetDict, cfg: TokenizerConfig) -> str:
    """What the token ids depend on: the splits' contents and the word-level settings."""
    recipe = {
        **{name: split._fingerprint for name, split in corpus.items()},
        "min_count": cfg.min_count,
        "max_vocab": cfg.max_vocab,
        "lowercase": cfg.lowercase,
        "tokenizers": tokenizers.__version__,
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def tokenize_corpus(corpus: datasets.DatasetDict, cfg: TokenizerConfig) -> Tokenized:
    """The tokenizer (trained on `train`) and the ids of every split (`train`, and `test` when
    the corpus has one), from the cache when an entry matches."""
    if cfg.cache:
        entry = cache_root() / cache_key(corpus, cfg)
        # an entry that exists and fails was damaged: rebuild it; one that did not exist
        # failed while being written: go on without the cache
        attempts = ("read", "rebuild") if entry.exists() else ("rebuild",)
        for attempt in attempts:
            try:
                return _through_cache(corpus, cfg, entry)
            except UserError:
                raise
            except Exception as e:  # Arrow, tokenizers and OS errors all mean the same here
                if attempt == "read":
                    log.warning(
                        "token cache %s is unreadable (%s); rebuilding it", entry, one_line(e)
                    )
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    log.warning(
                        "cannot write the token cache at %s (%s); tokenizing without it",
                        entry,
                        one_line(e),
                    )
    return _encoded(corpus, cfg, train_vocabulary(corpus["train"], cfg))


def _through_cache(corpus: datasets.DatasetDict, cfg: TokenizerConfig, entry: Path) -> Tokenized:
    tokenizer_file = entry / "tokenizer.json"
    if tokenizer_file.exists():
        tokenizer = WordTokenizer.read(tokenizer_file)
        trained = TrainedVocabulary(tokenizer, WordIds(tokenizer, cfg), train_ids=None)
        return _encoded(corpus, cfg, trained, entry, hit=True)
    trained = train_vocabulary(corpus["train"], cfg)
    entry.mkdir(parents=True, exist_ok=True)
    _save_atomically(trained.tokenizer, tokenizer_file)
    return _encoded(corpus, cfg, trained, entry)


def _encoded(
    corpus: datasets.DatasetDict,
    cfg: TokenizerConfig,
    trained: TrainedVocabulary,
    entry: Path | None = None,
    hit: bool = False,
) -> Tokenized:
    """Every split's ids, through one lookup (the training split's as counted, when they
    were); with a cache `entry`, in its files (a hit when the tokenizer (`hit`) and every
    split's ids were read from there)."""
    splits = {}
    for name, split in corpus.items():
        ids_file = None if entry is None else entry / f"{name}.arrow"
        hit = hit and ids_file.exists()
        splits[name] = encode_split(
            split,
            trained.tokenizer,
            cfg,
            cache_file=ids_file,
            word_ids=trained.lookup,
            known_ids=trained.train_ids if name == "train" else None,
        )
    return Tokenized(
        trained.tokenizer,
        splits["train"],
        splits.get("test"),
        cache_dir=entry,
        cache_hit=hit,
        counted=trained.train_counts,
    )


def _save_atomically(tokenizer: WordTokenizer, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
