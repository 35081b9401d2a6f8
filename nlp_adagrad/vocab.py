"""Text -> token ids: the HF `tokenizers` word-level tokenizer, token counts and hashed bigrams.

A split becomes an `EncodedSplit`, token ids in CSR form (one flat id array plus per-document
offsets), read straight out of the Arrow column that `datasets.map` produced. Unknown words are
dropped, as fastText drops them; bigrams are hashed into `buckets` extra rows after the words.
A trained tokenizer travels as a `WordTokenizer`: the JSON tokenizers reads and writes, and its
words in id order; the `tokenizers.Tokenizer` itself is made only for text that needs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from nlp_adagrad.config import TokenizerConfig
from nlp_adagrad.errors import UserError

UNK = "[UNK]"
UNK_ID = 0
BIGRAM_HASH_PRIME = 116_049_371  # fastText's multiplier for word n-gram hashes
HUGE_DOCUMENT_TOKENS = 100_000

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """Token ids of one split in CSR form: document d is ids[offsets[d]:offsets[d + 1]]."""

    ids: np.ndarray  # int64, all documents' token ids concatenated
    offsets: np.ndarray  # int64, num_docs + 1
    labels: np.ndarray | None  # int64, num_docs; None for text without labels (word vectors)

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class WordTokenizer:
    """A trained word-level tokenizer: its `tokenizers` JSON (what `save` writes and
    `Tokenizer.from_file` reads) and its words in id order (`tokens`). The `Tokenizer` object
    is made from the JSON only when a text needs it (one the kernel leaves to tokenizers):
    0.5 s for 690,000 words, as long as the kernel takes to count them."""

    def __init__(self, json_text: str, tokens: list[str], tokenizer: Tokenizer | None = None):
        self.json, self.tokens = json_text, tokens
        if tokenizer is not None:
            self.__dict__["tokenizer"] = tokenizer  # the cached property, already known

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> WordTokenizer:
        return cls(tokenizer.to_str(), vocabulary(tokenizer), tokenizer)

    @classmethod
    def read(cls, path: Path) -> WordTokenizer:
        """A saved tokenizer's JSON and words, without making the tokenizer (a damaged file
        raises ValueError or KeyError)."""
        text = path.read_text(encoding="utf-8")
        return cls(text, _in_id_order(json.loads(text)["model"]["vocab"]))

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.json)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.json.encode()).hexdigest()

    @property
    def num_words(self) -> int:
        return len(self.tokens)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.json, encoding="utf-8")


def train_tokenizer(texts: datasets.Dataset, cfg: TokenizerConfig) -> Tokenizer:
    """Word-level tokenizer (NFKC, optional lowercase, split on whitespace and punctuation).

    Word ids are ordered by descending training count, then by the word, with the unknown
    token at id 0: what tokenizers' WordLevelTrainer makes, and, with the C++ kernel
    (`tokenizer.kernel`), the same tokenizer made from its counts of the plain texts (ASCII
    and everyday symbols: words.cpp), tested.
    """
    return train_vocabulary(texts, cfg).tokenizer.tokenizer


@dataclass
class TrainedVocabulary:
    """What training a tokenizer leaves: the tokenizer, its lookup, and with the kernel the
    training texts' ids it met while counting and each id's count."""

    tokenizer: WordTokenizer
    lookup: WordIds  # the kernel's lookup of the words, or tokenizers' encoding
    train_ids: pa.ListArray | None  # the training texts' ids, found while counting (kernel)
    train_counts: np.ndarray | None = None  # each id's occurrences in them (kernel)


def train_vocabulary(texts: datasets.Dataset, cfg: TokenizerConfig) -> TrainedVocabulary:
    """`train_tokenizer`'s tokenizer, without making its `Tokenizer` where the kernel counts:
    the kernel numbers the words, writes them into the tokenizer's JSON and keeps which word
    each training token was, so the training texts' ids need no second reading."""
    base = _untrained_tokenizer(cfg)
    kernel = word_kernel(cfg)
    if kernel is None:
        # vocab_size defaults to 30,000 inside the trainer: always pass ours.
        trainer = trainers.WordLevelTrainer(
            vocab_size=cfg.max_vocab,
            min_frequency=cfg.min_count,
            special_tokens=[UNK],
            show_progress=False,
        )
        base.train_from_iterator(_text_batches(texts), trainer=trainer, length=len(texts))
        tokenizer = WordTokenizer.of(base)
        _refuse_empty(tokenizer.tokens, cfg)
        return TrainedVocabulary(tokenizer, WordIds(tokenizer, cfg), train_ids=None)
    column = texts.with_format("arrow")["text"]
    if isinstance(column, pa.ChunkedArray):  # a split's index mapping: a chunk a row
        column = column.combine_chunks()
    counts, others = _counted(column, cfg, kernel, base)
    tokens = [UNK, *counts.ranked(cfg.min_count, cfg.max_vocab - 1, 1)]  # [UNK] takes a row
    _refuse_empty(tokens, cfg)
    members = ",".join(filter(None, [f"{json.dumps(UNK)}:{UNK_ID}", counts.ranked_json()]))
    base.add_special_tokens([UNK])  # as the trainer registers its special tokens
    template = base.to_str()
    assert template.count(EMPTY_VOCAB) == 1, template
    tokenizer = WordTokenizer(template.replace(EMPTY_VOCAB, f'"vocab":{{{members}}}'), tokens)
    lookup = WordIds(tokenizer, cfg, counts)
    flat, lengths = counts.counted_ids()
    train_ids = _ids_array(column, flat, lengths, others, tokenizer)
    train_counts = np.zeros(len(tokens), dtype=np.int64)  # [UNK]'s 0: unknown words dropped
    train_counts[1:] = counts.ranked_counts().numpy()
    return TrainedVocabulary(tokenizer, lookup, train_ids, train_counts)


EMPTY_VOCAB = '"vocab":{}'  # the model's vocabulary in an untrained tokenizer's JSON


def _untrained_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(norm)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def _refuse_empty(tokens: list[str], cfg: TokenizerConfig) -> None:
    if len(tokens) <= 1:
        raise UserError(
            f"the vocabulary is empty: no word occurs at least tokenizer.min_count="
            f"{cfg.min_count} times in the training split; lower tokenizer.min_count"
        )


def word_kernel(cfg: TokenizerConfig):
    """The C++ word kernels for `tokenizer.kernel` (auto: where they build), or None."""
    from nlp_adagrad.kernels import native_kernels

    return native_kernels(cfg.kernel, "tokenizer.kernel")


def _counted(column: pa.Array, cfg: TokenizerConfig, kernel, tokenizer: Tokenizer):
    """(the kernel's WordCounts of the column's words, the indices of the texts it left to
    tokenizers): the kernel counts the plain texts in place, tokenizers' own normalizer and
    pre-tokenizer the others."""
    counts = kernel.WordCounts(cfg.lowercase)
    others = counts.count(*_arrow_texts(column))
    extra: dict[str, int] = {}
    for i in others.tolist():
        normalized = tokenizer.normalizer.normalize_str(column[i].as_py())
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized):
            extra[word] = extra.get(word, 0) + 1
    counts.add(list(extra), list(extra.values()))
    return counts, others


def _arrow_texts(texts: pa.Array) -> tuple[pa.Buffer | bytes, torch.Tensor, torch.Tensor]:
    """(data, starts, ends) of an Arrow string array as the C++ kernels read it: text t is
    data[starts[t]:ends[t]], a null text empty; no Python string is made."""
    _, offsets, data = texts.buffers()
    dtype = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    bounds = np.frombuffer(
        offsets, dtype=dtype, count=len(texts) + 1, offset=texts.offset * np.dtype(dtype).itemsize
    ).astype(np.int64)
    starts, ends = bounds[:-1], bounds[1:].copy()
    if texts.null_count:
        nulls = texts.is_null().to_numpy(zero_copy_only=False)
        ends[nulls] = starts[nulls]
    return data if data is not None else b"", torch.from_numpy(starts), torch.from_numpy(ends)


def _text_batches(ds: datasets.Dataset, size: int = 1000):
    for start in range(0, len(ds), size):
        yield ds[start : start + size]["text"]


def vocabulary(tokenizer: Tokenizer) -> list[str]:
    """Tokens in id order."""
    return _in_id_order(tokenizer.get_vocab())


def _in_id_order(vocab: dict[str, int]) -> list[str]:
    """The tokens of a token -> id map, listed by id."""
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def encode_split(
    ds: datasets.Dataset,
    tokenizer: Tokenizer | WordTokenizer,
    cfg: TokenizerConfig,
    cache_file: Path | None = None,
    word_ids: WordIds | None = None,
    known_ids: pa.ListArray | None = None,
) -> EncodedSplit:
    """Tokenize a split through `datasets.map`, fingerprinted by data and tokenizer.

    With `cache_file`, datasets writes the ids there as Arrow and, when the file already
    exists, reads it back instead of tokenizing (token_cache.py decides the name).
    `word_ids`: the tokenizer's lookup, when several splits share it (built here otherwise);
    `known_ids`: the split's ids, found while counting its words (`train_vocabulary`).
    """
    if isinstance(tokenizer, Tokenizer):
        tokenizer = WordTokenizer.of(tokenizer)
    word_ids = word_ids or WordIds(tokenizer, cfg)
    fingerprint = hashlib.sha256((ds._fingerprint + tokenizer.digest).encode()).hexdigest()[:32]
    features = {"ids": datasets.Sequence(datasets.Value("int32"))}
    if "label" in ds.features:
        features["label"] = ds.features["label"]
    encoded = ds.with_format("arrow").map(  # batches as Arrow tables: the text never Python
        _encode_batch,
        batched=True,
        batch_size=10_000,  # a batch is split over the threads (words.cpp)
        with_indices=True,
        fn_kwargs={"word_ids": word_ids, "known_ids": known_ids},
        remove_columns=["text"],
        features=datasets.Features(features),
        new_fingerprint=fingerprint,
        cache_file_name=None if cache_file is None else str(cache_file),
    )
    table = encoded.with_format("arrow")[:]  # honours an index mapping, reads columns whole
    column = table.column("ids").combine_chunks()
    labels = table.column("label").to_numpy().astype(np.int64) if "label" in features else None
    kernel = word_kernel(cfg) if cfg.ngrams == 2 else None
    if kernel is not None:  # add_bigrams' ids (tested), 30x faster, from the int32 ids in place
        ids, offsets = csr_from_lists(column, widen=False)
        ids, offsets = kernel.add_bigrams(
            _read_only(ids), torch.from_numpy(offsets), tokenizer.num_words, cfg.buckets
        )
        return EncodedSplit(ids=ids.numpy(), offsets=offsets.numpy(), labels=labels)
    ids, offsets = csr_from_lists(column)
    split = EncodedSplit(ids=ids, offsets=offsets, labels=labels)
    if cfg.ngrams == 2:
        split = add_bigrams(split, num_words=tokenizer.num_words, buckets=cfg.buckets)
    return split


def _read_only(values: np.ndarray) -> torch.Tensor:
    """A tensor over an array only a kernel's input reads: Arrow's buffers are read-only,
    and torch warns about every such array it wraps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(values)


def csr_from_lists(column: pa.ListArray, widen: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, int64 offsets from 0) of an Arrow list array, sliced or not: the values
    as int64, or as stored (no copy where Arrow allows) without `widen`.

    `flatten()`, not `.values`: the latter ignores a slice's start and end.
    """
    ids = column.flatten().to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy().astype(np.int64)
    return ids.astype(np.int64) if widen else ids, offsets - offsets[0]


def _encode_batch(
    batch: pa.Table, indices: list[int], word_ids: WordIds, known_ids: pa.ListArray | None
) -> pa.Table:
    column = batch.column("text").combine_chunks()
    tokenizer = word_ids.tokenizer
    if known_ids is not None:  # a batch is a run of rows: indices count up by one
        ids = known_ids.slice(indices[0] if len(indices) else 0, len(indices))
    elif word_ids.get() is None or column.null_count:
        texts = column.to_pylist()
        ids = pa.array(_tokenizers_ids(tokenizer.tokenizer, texts), pa.list_(pa.int32()))
    else:
        ids = _ids_array(column, *word_ids.get().encode(*_arrow_texts(column)), tokenizer)
    # a table replaces the batch whole, so it carries the kept columns (a dict returned for
    # an Arrow batch loses them: the labels came back null)
    kept = {name: batch.column(name) for name in batch.column_names if name != "text"}
    return pa.table({"ids": ids, **kept})


def _ids_array(
    column: pa.Array,
    flat: torch.Tensor,
    lengths: torch.Tensor,
    others: torch.Tensor,
    tokenizer: WordTokenizer,
) -> pa.ListArray:
    """A column's ids as one Arrow list array: the kernel's of its plain texts (`flat`, each
    text's count in `lengths`), tokenizers' of the `others`."""
    if len(others):
        rows = np.split(flat.numpy(), np.cumsum(lengths.numpy())[:-1])
        others = others.tolist()
        texts = [column[i].as_py() for i in others]
        for i, encoded in zip(others, _tokenizers_ids(tokenizer.tokenizer, texts)):
            rows[i] = encoded
        return pa.array(rows, pa.list_(pa.int32()))
    offsets = np.zeros(len(column) + 1, dtype=np.int32)
    np.cumsum(lengths.numpy(), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.numpy()))


def _tokenizers_ids(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    out = []
    # encode_batch_fast skips the character offsets we never read: 13% faster on BBC News
    for enc in tokenizer.encode_batch_fast(texts, add_special_tokens=False):
        ids = np.asarray(enc.ids, dtype=np.int32)
        out.append(ids[ids != UNK_ID])
    return out


class WordIds:
    """The kernel's lookup for a tokenizer's vocabulary (a `WordCounts` that numbered the
    words, or built from them when a batch first needs it: a split read back from the token
    cache never does), or None: tokenizers encodes."""

    def __init__(self, tokenizer: WordTokenizer, cfg: TokenizerConfig, lookup=None) -> None:
        self.tokenizer, self.cfg, self._lookup = tokenizer, cfg, lookup or False

    def get(self):
        if self._lookup is False:
            kernel = word_kernel(self.cfg)
            if kernel is None:
                self._lookup = None
            else:
                tokens = self.tokenizer.tokens
                self._lookup = kernel.WordIds(tokens, range(len(tokens)), self.cfg.lowercase)
        return self._lookup


def add_bigrams(split: EncodedSplit, num_words: int, buckets: int) -> EncodedSplit:
    """Append each document's hashed bigram rows after its words, without a Python loop.

    Bigram (a, b) goes to row num_words + (a * 116049371 + b) % buckets, as fastText's
    -wordNgrams 2 hashes word pairs into -bucket rows after the vocabulary.
    """
    lengths = split.lengths
    num_pairs = np.maximum(lengths - 1, 0)
    # every word moves right by the pairs of the documents before it; its own pair (if it
    # starts one) lands a document length further on
    shift = np.repeat(np.cumsum(num_pairs) - num_pairs, lengths)
    word_pos = np.arange(len(split.ids), dtype=np.int64)
    word_pos += shift
    starts_pair = np.ones(len(split.ids), dtype=bool)
    starts_pair[split.offsets[1:][lengths > 0] - 1] = False  # a document's last word
    pair_at = np.flatnonzero(starts_pair)
    bigrams = split.ids[pair_at] * BIGRAM_HASH_PRIME
    bigrams += split.ids[pair_at + 1]
    bigrams %= buckets
    bigrams += num_words
    ids = np.empty(len(split.ids) + len(pair_at), dtype=np.int64)
    ids[word_pos] = split.ids
    ids[word_pos[pair_at] + np.repeat(lengths, lengths)[pair_at]] = bigrams
    new_offsets = split.offsets + np.concatenate([[0], np.cumsum(num_pairs)])
    return EncodedSplit(ids=ids, offsets=new_offsets, labels=split.labels)


def warn_unusual_documents(split: EncodedSplit, name: str) -> None:
    """Usable but worth knowing: documents with no known token, and huge ones."""
    lengths = split.lengths
    empty = int((lengths == 0).sum())
    if empty:
        log.warning(
            "%s split: %d of %d documents have no known token (empty, or only unknown words); "
            "the model sees them as an empty bag",
            name,
            empty,
            split.num_docs,
        )
    huge = int((lengths > HUGE_DOCUMENT_TOKENS).sum())
    if huge:
        log.warning(
            "%s split: %d documents have more than %d tokens (longest %d); each is used whole",
            name,
            huge,
            HUGE_DOCUMENT_TOKENS,
            int(lengths.max()),
        )


def token_counts(
    split: EncodedSplit,
    num_rows: int,
    cfg: TokenizerConfig | None = None,
    words_only: bool = False,
) -> np.ndarray:
    """Occurrences of each row id below `num_rows` in a split (words, and bigram buckets when
    present); `words_only` passes over the ids at and above it (the buckets, when `num_rows`
    is the vocabulary's size) where they would be refused. With `cfg`, through its word kernel
    where it builds (the same counts, tested: 0.16 -> 0.13 s for the synthetic corpus's
    3.2x10^7 ids, its counters fetched ahead)."""
    kernel = None if cfg is None else word_kernel(cfg)
    if kernel is not None:
        return kernel.row_counts(torch.from_numpy(split.ids), num_rows, words_only).numpy()
    ids = split.ids[split.ids < num_rows] if words_only else split.ids
    return np.bincount(ids, minlength=num_rows).astype(np.int64)
