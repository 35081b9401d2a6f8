"""The text a word-vector task trains on: every document of the configured corpus, labels
ignored, tokenized once (through the token cache), with each word's count."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import datasets
import numpy as np

from nlp_adagrad.config import Config
from nlp_adagrad.data import load_texts
from nlp_adagrad.token_cache import tokenize_corpus
from nlp_adagrad.vocab import EncodedSplit, WordTokenizer, warn_unusual_documents

log = logging.getLogger("nlp_adagrad.train")


@dataclass
class WordCorpus:
    tokenizer: WordTokenizer
    text: EncodedSplit  # every document's ids (unknown words dropped, as word2vec drops them)
    counts: np.ndarray  # occurrences of each id in `text`
    prepare_seconds: float  # raw text in memory -> ids and counts

    @property
    def tokens(self) -> list[str]:
        """The vocabulary in id order; id 0 is the unknown token, never trained."""
        return self.tokenizer.tokens


def word_corpus(cfg: Config) -> WordCorpus:
    texts = load_texts(cfg.data)
    started = time.perf_counter()
    tokenized = tokenize_corpus(datasets.DatasetDict(train=texts), cfg.tokenizer)
    if tokenized.cache_hit:
        log.info("token ids read from the cache: %s", tokenized.cache_dir)
    tokens = tokenized.tokens
    warn_unusual_documents(tokenized.train, "text")
    counts = tokenized.train_word_counts(cfg.tokenizer)
    corpus = WordCorpus(tokenized.tokenizer, tokenized.train, counts, time.perf_counter() - started)
    log.info(
        "data=%s: %d documents, %d words in the vocabulary (min_count %d), %d training words",
        cfg.data.name,
        corpus.text.num_docs,
        len(tokens) - 1,
        cfg.tokenizer.min_count,
        len(corpus.text.ids),
    )
    return corpus
