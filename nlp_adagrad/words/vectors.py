"""A word-vector run's vectors: `vectors.txt` in word2vec's text format (loadable by gensim's
`KeyedVectors.load_word2vec_format`), read back for `neighbors`, and the evaluation metrics
every embedding run reports (benchmarks, and ground truth on `data=planted`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nlp_adagrad.config import Config, PlantedGroupsConfig
from nlp_adagrad.data import planted_groups
from nlp_adagrad.errors import UserError
from nlp_adagrad.words.evaluation import VectorIndex, benchmarks, planted_precision

VECTORS_FILE = "vectors.txt"


def write_word2vec_text(path: Path, words: list[str], vectors: np.ndarray) -> None:
    """`<words> <dim>`, then one `word v1 ... vdim` line per word (%.6g floats)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n")
        body = np.char.mod("%.6g", vectors)
        f.writelines(f"{word} {' '.join(row)}\n" for word, row in zip(words, body))
    tmp.replace(path)


def read_word2vec_text(path: Path) -> tuple[list[str], np.ndarray]:
    """(words, float32 vectors) of a word2vec text file, such as a run's vectors.txt."""
    try:
        with open(path, encoding="utf-8") as f:
            count, dim = (int(x) for x in f.readline().split())
            words, rows = [], []
            for line in f:
                word, *values = line.rstrip("\n").split(" ")
                words.append(word)
                rows.append(values)
        vectors = np.array(rows, dtype=np.float32).reshape(len(words), dim)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not a word2vec text file ({e}); give a run's vectors.txt"
        ) from None
    if len(words) != count:
        raise UserError(f"{path} announces {count} words but holds {len(words)}; it is truncated")
    return words, vectors


def finish_vectors(
    cfg: Config, run_dir: Path | None, tokens: list[str], vectors: np.ndarray, counts: np.ndarray
) -> dict[str, float]:
    """Write vectors.txt (without the unknown token) when `run_dir` is given, and return the
    eval/... metrics of the vectors."""
    words, vectors, counts = tokens[1:], vectors[1:], counts[1:]
    index = VectorIndex.build(words, vectors, counts, cfg.tokenizer.lowercase)
    metrics = benchmarks(index)
    if isinstance(cfg.data, PlantedGroupsConfig):
        metrics.update(planted_precision(index, planted_groups(cfg.data)))
    if run_dir is not None:
        write_word2vec_text(run_dir / VECTORS_FILE, words, vectors)
    return metrics
