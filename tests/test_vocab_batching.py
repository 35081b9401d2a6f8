"""Tokenizer, hashed bigrams and batch gathering against plain-Python references."""

from __future__ import annotations

import re
import unicodedata

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer

from nlp_adagrad.batching import batch_indices, epoch_order, make_batch
from nlp_adagrad.config import TokenizerConfig
from nlp_adagrad.distributed import Topology
from nlp_adagrad.errors import UserError
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.token_cache import tokenize_corpus
from nlp_adagrad.vocab import (
    BIGRAM_HASH_PRIME,
    UNK,
    EncodedSplit,
    _arrow_texts,
    add_bigrams,
    csr_from_lists,
    encode_split,
    token_counts,
    train_tokenizer,
    vocabulary,
)
from tests.helpers import REPO, at_thread_counts


def dataset(texts):
    return datasets.Dataset.from_dict({"text": texts, "label": [0] * len(texts)})


def test_tokenizer_orders_by_count_and_drops_unknown_words():
    train = dataset(["b a a, c", "A a b!"])
    tok = train_tokenizer(train, TokenizerConfig(min_count=2))
    vocab = vocabulary(tok)
    assert vocab[0] == UNK and vocab[1:3] == ["a", "b"]  # lowercased; c, ",", "!" below min_count
    split = encode_split(dataset(["a zebra b a"]), tok, TokenizerConfig())
    assert split.ids.tolist() == [1, 2, 1]  # "zebra" is unknown: dropped, as fastText does
    assert split.offsets.tolist() == [0, 3]


def test_max_vocab_is_respected_and_empty_vocab_is_refused():
    tok = train_tokenizer(dataset(["a a a b b c"]), TokenizerConfig(max_vocab=3))
    assert vocabulary(tok) == [UNK, "a", "b"]
    with pytest.raises(UserError, match="vocabulary is empty"):
        train_tokenizer(dataset(["a b c"]), TokenizerConfig(min_count=5))


def test_bigrams_match_a_python_reference():
    docs = [[3, 1, 4], [], [1], [5, 9, 2, 6]]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    split = EncodedSplit(np.array(sum(docs, []), np.int64), offsets, np.zeros(4, np.int64))
    out = add_bigrams(split, num_words=10, buckets=7)
    kernel = native_kernels("cpp", "tokenizer.kernel")
    ids, new_offsets = kernel.add_bigrams(
        torch.from_numpy(split.ids), torch.from_numpy(split.offsets), 10, 7
    )
    assert ids.tolist() == out.ids.tolist() and new_offsets.tolist() == out.offsets.tolist()
    # and on a corpus: large ids (no overflow), empty and one-word documents, several threads
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, 5000)
    big = EncodedSplit(
        rng.integers(0, 2**31 - 1, int(lengths.sum())),
        np.concatenate([[0], np.cumsum(lengths)]),
        None,
    )
    # the kernel's remainder is two multiplications, not a division: exact for every divisor
    for buckets in (1, 2, 7, 2**20, 2_000_003, 2**31 - 1, 10**12 + 39):
        want = add_bigrams(big, num_words=2**31, buckets=buckets)
        for stored in (np.int64, np.int32):  # int32: the Arrow column's ids, read in place
            ids, new_offsets = kernel.add_bigrams(
                torch.from_numpy(big.ids.astype(stored)),
                torch.from_numpy(big.offsets),
                2**31,
                buckets,
            )
            assert np.array_equal(ids.numpy(), want.ids), (buckets, stored)
            assert np.array_equal(new_offsets, want.offsets)
    expected = []
    for d in docs:
        expected.append(d + [10 + (a * BIGRAM_HASH_PRIME + b) % 7 for a, b in zip(d, d[1:])])
    got = [out.ids[out.offsets[i] : out.offsets[i + 1]].tolist() for i in range(4)]
    assert got == expected
    assert token_counts(out, 17).sum() == sum(len(e) for e in expected)


def test_the_kernel_counts_rows_as_bincount_does():
    rng = np.random.default_rng(3)
    ids = np.concatenate([rng.zipf(1.3, 50_000) % 1_000, rng.integers(1_000, 300_000, 50_000)])
    split = EncodedSplit(ids.astype(np.int64), np.array([0, len(ids)]), None)
    want = np.bincount(ids, minlength=400_000)
    for kernel in ("cpp", "tokenizers"):
        got = token_counts(split, 400_000, TokenizerConfig(kernel=kernel))
        assert got.dtype == np.int64 and np.array_equal(got, want), kernel
        # a classifier's words only: the ids past the vocabulary (buckets) passed over
        words = token_counts(split, 1_000, TokenizerConfig(kernel=kernel), words_only=True)
        assert np.array_equal(words, want[:1_000]), kernel
    kernel = native_kernels("cpp", "tokenizer.kernel")
    with pytest.raises(RuntimeError, match="outside"):
        kernel.row_counts(torch.tensor([0, 5]), 5, False)
    with pytest.raises(RuntimeError, match="outside"):  # a negative id is no bucket
        kernel.row_counts(torch.tensor([0, -1]), 5, True)


def test_make_batch_gathers_documents_in_order():
    docs = [[1, 2], [3], [], [4, 5, 6]]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    split = EncodedSplit(np.array(sum(docs, []), np.int64), offsets, np.arange(4))
    batch = make_batch(split, np.array([3, 0, 2]))
    assert batch.ids.tolist() == [4, 5, 6, 1, 2]
    assert batch.offsets.tolist() == [0, 3, 5]
    assert batch.labels.tolist() == [3, 0, 2]


def test_epoch_order_is_seeded_and_batches_cover_every_document_once():
    a, b = epoch_order(103, seed=7, epoch=2), epoch_order(103, seed=7, epoch=2)
    assert (a == b).all() and not (a == epoch_order(103, seed=7, epoch=3)).all()
    seen = np.concatenate(list(batch_indices(a, batch_size=10)))
    assert sorted(seen.tolist()) == list(range(103))
    # two ranks split each global batch; together they see exactly what one process sees
    for whole in batch_indices(a, 10):
        r0, r1 = (Topology(rank, 2).share(whole) for rank in (0, 1))
        assert sorted(whole.tolist()) == sorted(np.concatenate([r0, r1]).tolist())
    # resuming at batch 4 yields the tail of the same order
    assert np.concatenate(list(batch_indices(a, 10, start=4))).tolist() == a[40:].tolist()


def test_csr_from_a_sliced_arrow_list_column_starts_at_the_slice():
    import pyarrow as pa

    column = pa.array([[1, 2], [3], [4, 5, 6], [7]], type=pa.list_(pa.int32())).slice(1, 2)
    ids, offsets = csr_from_lists(column)
    assert ids.tolist() == [3, 4, 5, 6] and offsets.tolist() == [0, 1, 4]


def test_prefetched_batches_come_in_order_and_stop_early_cleanly():
    from nlp_adagrad.batching import prefetched

    made = []

    def make(k):
        made.append(k)
        return k * k

    assert list(prefetched(make, range(5), ahead=True)) == [0, 1, 4, 9, 16]
    assert list(prefetched(make, range(5), ahead=False)) == [0, 1, 4, 9, 16]
    made.clear()
    for value in prefetched(make, range(100), ahead=True):
        if value == 4:
            break
    assert made == [0, 1, 2, 3]  # one batch ahead at most, none after the loop stops


TRICKY = [
    "The QUICK brown_fox, 42 times!! ... (again)",  # case, underscores, digits, runs of marks
    "tabs\tand\nnewlines\x0bvt\x0cff\rcr  spaces",  # \s on ASCII: \t \n \v \f \r and space
    "file\x1cgroup\x1drecord\x1funit\x00nul\x7fdel",  # neither \w nor \s: 'other' runs
    "Café crème, naïve — “quoted” ｆｕｌｌｗｉｄｔｈ ＡＢＣ",  # not ASCII: NFKC folds the last two
    "non\xa0breaking\u2003em space, 東京 tokyo",  # not ASCII: Unicode spaces and letters
    "",
    "a a a b b b c c d",  # ties broken by the word
    "the the the quick fox",
    "£5, €3.50 – “so” — ‘it’s’ ©2024 ±1 ×2 ÷3 «a» ¿b? •c‣d †e‡ 10‰ 5′ ‹f› ¡g!",  # plain
    "£ alone, and £. £$ with ASCII marks; caf\u0065\u0301 (a combining mark): not plain",
    "Ⅻ ﬁ ™ … ½ µ ª ² \u00ad soft hyphen",  # compatibility forms NFKC changes: not plain
    'JSON\'s own: "quoted" back\\slash {"k": [1]} \\"\\u0041',  # escaped in tokenizer.json
]


def plain_symbols() -> list[str]:
    """words.cpp's kSymbols, read from the source."""
    listed = (REPO / "nlp_adagrad/csrc/words.cpp").read_text().split("kSymbols[] = {", 1)[1]
    return [chr(int(code, 16)) for code in re.findall(r"0x[0-9a-f]+", listed.split("};")[0])]


def test_the_plain_symbols_are_ones_neither_normalizer_changes_and_no_word_holds():
    symbols = plain_symbols()
    assert len(symbols) == 43 and "£" in symbols and "€" in symbols
    assert symbols == sorted(symbols)  # the kernel looks them up by binary search
    for ch in symbols:
        assert unicodedata.normalize("NFKC", ch) == ch and ch.lower() == ch == ch.upper(), ch
        category = unicodedata.category(ch)  # "other" for the pre-tokenizer: not \w, not \s
        assert category[0] in "SP" and category != "Pc" and not ch.isspace(), ch
    # and the kernel reads them itself, handing tokenizers only the other texts
    kernel = native_kernels("cpp", "tokenizer.kernel")
    texts = pa.array(["".join(symbols), "naïve", "£ and …", "plain ascii", "x\u0301"])
    assert kernel.WordCounts(True).count(*_arrow_texts(texts)).tolist() == [1, 2, 4]


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(lowercase=False),
        dict(min_count=2),
        dict(max_vocab=5),  # truncation inside a tie
    ],
)
def test_the_word_kernel_makes_tokenizers_own_tokenizer_and_ids(settings):
    from nlp_adagrad.kernels import native_kernels

    native_kernels("cpp", "tokenizer.kernel")  # this test is about the kernel: it must build
    every_symbol = " ".join(f"x{s}y {s}{s}. {s}" for s in plain_symbols())
    train = dataset([*TRICKY, every_symbol])
    test = dataset([*TRICKY[::-1], "QUICK unseen fox!", every_symbol[::-1]])
    train = train.map(lambda row, i: {"label": i % 3}, with_indices=True)
    made = {}
    for kernel in ("tokenizers", "cpp"):
        cfg = TokenizerConfig(kernel=kernel, **settings)
        tokenizer = train_tokenizer(train, cfg)
        splits = [encode_split(ds, tokenizer, cfg) for ds in (train, test)]
        made[kernel] = tokenizer.to_str(), [(s.ids.tolist(), s.offsets.tolist()) for s in splits]
        assert splits[0].labels.tolist() == [i % 3 for i in range(len(TRICKY) + 1)]  # kept
        assert splits[1].labels.tolist() == [0] * (len(TRICKY) + 2)
    assert made["cpp"] == made["tokenizers"]  # the same tokenizer.json, the same ids
    assert len(made["cpp"][1][0][0]) > 10  # the texts did become ids


def test_the_word_kernel_ranks_frequent_and_rare_words_as_the_trainer_does():
    # words counted 1,024 times and more are sorted whole, the others placed by their count
    # and sorted by their bytes within it (words.cpp): ties on both sides of that line, words
    # sharing their first 8 bytes, and counts on either side of it
    counts = {"zebra": 2000, "apple": 2000, "prefix_long_b": 1500, "prefix_long_a": 1500}
    counts |= {"mango": 1024, "kiwi": 1023, "fig": 1023, "prefix_long_d": 7, "prefix_long_c": 7}
    counts |= {f"w{i}": 1 + i % 5 for i in range(300)}
    words = [word for word, n in counts.items() for _ in range(n)]
    np.random.default_rng(0).shuffle(words)
    train = dataset([" ".join(words[i : i + 50]) for i in range(0, len(words), 50)])
    made = {}
    for kernel in ("tokenizers", "cpp"):
        made[kernel] = train_tokenizer(train, TokenizerConfig(kernel=kernel)).to_str()
    assert made["cpp"] == made["tokenizers"]
    vocab = Tokenizer.from_str(made["cpp"]).get_vocab()
    assert vocab["apple"] < vocab["zebra"] < vocab["prefix_long_a"] < vocab["mango"]
    assert vocab["mango"] < vocab["fig"] < vocab["kiwi"] < vocab["prefix_long_c"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_the_word_kernel_splits_every_kind_of_byte_at_every_place_in_a_64_byte_block(lowercase):
    # the kernel classifies 64 bytes at a time (AVX2 where built), a text's last bytes one by
    # one: each text here is the plain TRICKY texts shifted by 0..129 bytes, so every byte
    # kind and run lands on every position of a block and runs cross blocks; long words and
    # runs of marks (over 8 and over 64 bytes) test the hash's 8-byte chunks
    runs = ["Antidisestablishmentarianism", "x" * 70, "Y_9" * 30, "?!" * 40, "a.b,c;d"]
    body = " ".join([*TRICKY[:3], *TRICKY[6:9], TRICKY[11], *runs])  # the plain ones
    texts = [("ab C" * 40)[:shift] + body for shift in range(130)]
    counts = native_kernels("cpp", "tokenizer.kernel").WordCounts(lowercase)
    assert counts.count(*_arrow_texts(pa.array(texts))).tolist() == []  # it reads them all
    train, test = dataset(texts[::2]), dataset(texts[1::2])
    made = {}
    for kernel in ("tokenizers", "cpp"):
        cfg = TokenizerConfig(kernel=kernel, lowercase=lowercase)
        tokenizer = train_tokenizer(train, cfg)
        made[kernel] = (
            tokenizer.to_str(),
            [encode_split(ds, tokenizer, cfg).ids.tolist() for ds in (train, test)],
        )
    assert made["cpp"] == made["tokenizers"]
    assert len(made["cpp"][1][1]) > 65 * 100  # every text became ids


@pytest.mark.parametrize(
    "settings", [dict(), dict(lowercase=False), dict(min_count=2), dict(max_vocab=5)]
)
def test_counting_writes_tokenizers_own_json_and_the_training_ids(settings):
    # the kernel writes tokenizer.json itself (no Tokenizer made) and keeps the training ids
    # it met while counting (no second reading): both byte for byte what tokenizers makes,
    # on an index-mapped training split with texts the kernel leaves to tokenizers
    native_kernels("cpp", "tokenizer.kernel")
    every_symbol = " ".join(f"x{s}y {s}{s}. {s}" for s in plain_symbols())
    texts = [*TRICKY, every_symbol, *TRICKY[::-1]]
    full = datasets.Dataset.from_dict({"text": texts, "label": list(range(len(texts)))})
    corpus = datasets.DatasetDict(
        train=full.select(range(len(TRICKY) + 1)[::-1]),
        test=full.select(range(len(TRICKY) + 1, len(texts))),
    )
    made = {}
    for kernel in ("tokenizers", "cpp"):
        cfg = TokenizerConfig(kernel=kernel, cache=False, **settings)
        got = tokenize_corpus(corpus, cfg)
        splits = [
            (s.ids.tolist(), s.offsets.tolist(), s.labels.tolist()) for s in (got.train, got.test)
        ]
        # the words' counts as the kernel counted them: those of the ids (in the other texts'
        # words too), counted only where the kernel did not count
        counts = got.train_word_counts(cfg)
        assert (got.counted is not None) == (kernel == "cpp")
        from_ids = token_counts(got.train, len(got.tokens), cfg, words_only=True)
        assert counts.dtype == np.int64 and counts.tolist() == from_ids.tolist()
        made[kernel] = got.tokenizer.json, got.tokens, splits
        assert Tokenizer.from_str(got.tokenizer.json).to_str() == got.tokenizer.json
    assert made["cpp"] == made["tokenizers"]
    if settings.keys() <= {"lowercase"}:  # words that needed escaping were written
        assert (
            "\\\\" in made["cpp"][0] and '"\\u001c"' in made["cpp"][0] and '\\"' in made["cpp"][0]
        )


def test_the_word_kernel_encodes_a_batch_of_ascii_texts_as_one_arrow_table():
    # one table per batch: datasets converts a list of arrays one row at a time
    cfg = TokenizerConfig(kernel="cpp")
    ascii_only = dataset(["one two", "two three two", "", "four"])
    split = encode_split(ascii_only, train_tokenizer(ascii_only, cfg), cfg)
    assert split.offsets.tolist() == [0, 2, 5, 5, 6]
    assert split.labels.tolist() == [0, 0, 0, 0]


def test_the_word_kernel_keeps_every_documents_label():
    cfg = TokenizerConfig(kernel="cpp")
    ds = datasets.Dataset.from_dict({"text": ["a b", "b c", "c d e"], "label": [2, 0, 1]})
    split = encode_split(ds.select([2, 0, 1]), train_tokenizer(ds, cfg), cfg)
    assert split.labels.tolist() == [1, 2, 0]  # the labels of the documents, in split order


def test_the_word_kernel_gives_the_same_tokenizer_and_ids_at_any_thread_count():
    # enough texts for one range per thread (500 a range), some of them not ASCII
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(300)] + ["Zebra", "naïve", "x_y", "42", "?!"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(3000)]
    ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 4 for i in range(3000)]})

    def made(kernel: str):
        cfg = TokenizerConfig(kernel=kernel, min_count=2, cache=False)
        tokenizer = train_tokenizer(ds, cfg)
        split = encode_split(ds.select(range(3000)[::-1]), tokenizer, cfg)  # index-mapped
        # and the training ids kept while counting, each thread's words numbered in its table
        counted = tokenize_corpus(datasets.DatasetDict(train=ds.select(range(3000)[::-1])), cfg)
        return (
            tokenizer.to_str(),
            split.ids.tolist(),
            split.offsets.tolist(),
            split.labels.tolist(),
            counted.tokenizer.json,
            counted.train.ids.tolist(),
            counted.train.offsets.tolist(),
            counted.train_word_counts(cfg).tolist(),
        )

    expected = made("tokenizers")
    assert len(expected[1]) > 20_000
    for got in at_thread_counts(lambda: made("cpp"), counts=(1, 2)):
        assert got == expected
