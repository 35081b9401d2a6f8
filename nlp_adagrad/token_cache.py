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
import tokenizers
from tokenizers import Tokenizer

from nlp_adagrad.config import TokenizerConfig
from nlp_adagrad.errors import UserError, one_line
from nlp_adagrad.vocab import EncodedSplit, WordIds, encode_split, train_vocabulary, vocabulary

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the tokenizer recipe or the cached layout changes


@dataclass
class Tokenized:
    tokenizer: Tokenizer
    tokens: list[str]  # the vocabulary in id order (nlp_adagrad.vocab.vocabulary)
    train: EncodedSplit
    test: EncodedSplit | None  # None for a corpus without a test split (word vectors)
    cache_dir: Path | None  # the entry used, None with tokenizer.cache=false
    cache_hit: bool


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
    return _encoded(corpus, cfg, *train_vocabulary(corpus["train"], cfg))


def _through_cache(corpus: datasets.DatasetDict, cfg: TokenizerConfig, entry: Path) -> Tokenized:
    tokenizer_file = entry / "tokenizer.json"
    hit = tokenizer_file.exists()
    if hit:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokens = vocabulary(tokenizer)
    else:
        tokenizer, tokens = train_vocabulary(corpus["train"], cfg)
        entry.mkdir(parents=True, exist_ok=True)
        _save_atomically(tokenizer, tokenizer_file)
    return _encoded(corpus, cfg, tokenizer, tokens, entry, hit)


def _encoded(
    corpus: datasets.DatasetDict,
    cfg: TokenizerConfig,
    tokenizer: Tokenizer,
    tokens: list[str],
    entry: Path | None = None,
    hit: bool = False,
) -> Tokenized:
    """Every split's ids, through one lookup; with a cache `entry`, in its files (a hit when
    the tokenizer (`hit`) and every split's ids were read from there)."""
    word_ids = WordIds(tokenizer, cfg, tokens)
    splits = {}
    for name, split in corpus.items():
        ids_file = None if entry is None else entry / f"{name}.arrow"
        hit = hit and ids_file.exists()
        splits[name] = encode_split(split, tokenizer, cfg, cache_file=ids_file, word_ids=word_ids)
    return Tokenized(
        tokenizer, tokens, splits["train"], splits.get("test"), cache_dir=entry, cache_hit=hit
    )


def _save_atomically(tokenizer: Tokenizer, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
