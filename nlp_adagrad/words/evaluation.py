"""Judging word vectors as word2vec, gensim and fastText users do: Spearman rho on
WordSim-353 and SimLex-999, accuracy on the questions-words analogies (3CosAdd, the question's
own words excluded), each with its out-of-vocabulary rate; similarity by word frequency; and,
on `data=planted`, how often a word's nearest neighbours are its own group (exact truth).

The benchmark files ship inside the gensim wheel (`gensim/test/test_data/`); they are located
without importing gensim (a second of start-up). Pairs or questions with a word outside the
vocabulary are left out and counted in `oov`, as gensim's evaluate_* functions do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from nlp_adagrad.errors import UserError

SIMILARITY_SETS = {"ws353": "wordsim353.tsv", "simlex": "simlex999.txt"}
ANALOGY_SET = "questions-words.txt"
# pairs of WordSim-353 and SimLex-999 by the smaller count of their two words: the cut of the
# issue's prototype on BBC News (n = 355 / 233 / 221)
FREQUENCY_BANDS = (("count_lt20", 0, 20), ("count_20_49", 20, 50), ("count_ge50", 50, None))
ANALOGY_CHUNK = 1024  # questions scored against the whole vocabulary at once


def benchmark_path(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "word-similarity sets come from the gensim wheel, which is not installed; "
            "run bash scripts/setup.sh (it pins gensim)"
        )
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name


@dataclass
class VectorIndex:
    """Unit-length vectors of a vocabulary, looked up by word."""

    words: list[str]
    unit: np.ndarray  # float32 (words, dim), rows of length 1 (0 for all-zero vectors)
    counts: np.ndarray  # training occurrences of each word
    lowercase: bool  # fold the benchmark words as the tokenizer folded the corpus

    @classmethod
    def build(cls, words: list[str], vectors: np.ndarray, counts: np.ndarray, lowercase: bool):
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        return cls(list(words), unit, np.asarray(counts), lowercase)

    def __post_init__(self) -> None:
        self.position = {w: i for i, w in enumerate(self.words)}

    def find(self, word: str) -> int | None:
        return self.position.get(word.lower() if self.lowercase else word)

    def nearest(
        self, query: np.ndarray, k: int, exclude: tuple[int, ...] = ()
    ) -> list[tuple[str, float]]:
        """The k words most cosine-similar to `query` (any vector), without `exclude`."""
        norm = np.linalg.norm(query)
        sims = self.unit @ (query / norm if norm > 0 else query)
        sims[list(exclude)] = -np.inf
        top = np.argsort(-sims, kind="stable")[:k]
        return [(self.words[i], float(sims[i])) for i in top]


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b, score = line.split("\t")[:3]
            pairs.append((a, b, float(score)))
    return pairs


def read_analogies(path: Path) -> list[tuple[str, str, str, str]]:
    return [
        tuple(line.split())
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(":")
    ]


def _pairs_found(index: VectorIndex, pairs: list[tuple[str, str, float]]):
    """(row ids a, row ids b, human scores) of the pairs whose two words are known."""
    found = [(index.find(a), index.find(b), s) for a, b, s in pairs]
    used = [(i, j, s) for i, j, s in found if i is not None and j is not None]
    if not used:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    i, j, gold = (np.array(col) for col in zip(*used))
    return i, j, gold.astype(np.float64)


def similarity(index: VectorIndex, pairs: list[tuple[str, str, float]]) -> dict[str, float]:
    """rho (Spearman, cosine against the human scores), oov (share of pairs left out) and
    pairs (used)."""
    i, j, gold = _pairs_found(index, pairs)
    out = {"oov": 1 - len(gold) / len(pairs), "pairs": float(len(gold)), "rho": float("nan")}
    if len(gold) >= 3:
        out["rho"] = _rho(_cosines(index, i, j), gold)
    return out


def similarity_by_count(
    index: VectorIndex, pairs: list[tuple[str, str, float]], seed: int = 0, resamples: int = 1000
) -> dict[str, float]:
    """rho per band of the pair's rarer word's count (FREQUENCY_BANDS), with its pairs and a
    95% percentile bootstrap interval over the band's pairs (`ci_low`, `ci_high`): how far
    another draw of word pairs could move it, the uncertainty a seed's spread does not show."""
    i, j, gold = _pairs_found(index, pairs)
    cosine, rarer = _cosines(index, i, j), np.minimum(index.counts[i], index.counts[j])
    rng = np.random.default_rng(seed)
    out = {}
    for band, low, high in FREQUENCY_BANDS:
        inside = (rarer >= low) & (rarer < (high if high is not None else np.inf))
        n = int(inside.sum())
        out[f"{band}/pairs"] = float(n)
        rho = low_ci = high_ci = float("nan")
        if n >= 3:
            x, y = cosine[inside], gold[inside]
            rho = _rho(x, y)
            draws = rng.integers(n, size=(resamples, n))
            boot = _rows_rho(x[draws], y[draws])
            low_ci, high_ci = (float(q) for q in np.nanpercentile(boot, [2.5, 97.5]))
        out.update({f"{band}/rho": rho, f"{band}/ci_low": low_ci, f"{band}/ci_high": high_ci})
    return out


def _cosines(index: VectorIndex, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", index.unit[i], index.unit[j]).astype(np.float64)


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic)


def _rows_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (ties get average ranks), vectorised over rows."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def analogies(index: VectorIndex, questions: list[tuple[str, ...]]) -> dict[str, float]:
    """accuracy of b - a + c = d over the questions whose four words are known, and oov."""
    found = [[index.find(w) for w in q] for q in questions]
    known = np.array([q for q in found if None not in q], dtype=np.int64).reshape(-1, 4)
    out = {"oov": 1 - len(known) / len(questions), "questions": float(len(known))}
    correct = 0
    for start in range(0, len(known), ANALOGY_CHUNK):
        a, b, c, d = known[start : start + ANALOGY_CHUNK].T
        sims = (index.unit[b] - index.unit[a] + index.unit[c]) @ index.unit.T
        rows = np.arange(len(a))
        for excluded in (a, b, c):
            sims[rows, excluded] = -np.inf
        correct += int((sims.argmax(axis=1) == d).sum())
    out["accuracy"] = correct / len(known) if len(known) else float("nan")
    return out


@cache
def _benchmark_sets() -> tuple[dict[str, list], list]:
    """The similarity sets' pairs by name and the analogy questions, read once a process
    (a run with trainer.eval_every scores its vectors many times)."""
    pairs = {name: read_pairs(benchmark_path(file)) for name, file in SIMILARITY_SETS.items()}
    return pairs, read_analogies(benchmark_path(ANALOGY_SET))


def benchmarks(index: VectorIndex) -> dict[str, float]:
    """eval/<set>/... for both similarity sets and the analogies (metrics.json keys)."""
    pairs, questions = _benchmark_sets()
    out = {}
    for name, set_pairs in pairs.items():
        for key, value in similarity(index, set_pairs).items():
            out[f"eval/{name}/{key}"] = value
    for key, value in analogies(index, questions).items():
        out[f"eval/analogy/{key}"] = value
    # both sets' pairs together (both scored 0-10): enough pairs per band for an interval
    pooled = [p for set_pairs in pairs.values() for p in set_pairs]
    for key, value in similarity_by_count(index, pooled).items():
        out[f"eval/by_count/{key}"] = value
    return out


def planted_precision(index: VectorIndex, groups: list[tuple[list[str], int]]) -> dict[str, float]:
    """Per frequency level of `data=planted`: the share of each group word's group_size - 1
    nearest neighbours (among all group words, by cosine) that are its own group's words.
    Random vectors score (group_size - 1) / (group words - 1)."""
    words = [w for group, _ in groups for w in group]
    found = [index.find(w) for w in words]
    if None in found:
        missing = words[found.index(None)]
        raise UserError(
            f"planted word {missing!r} is not in the vocabulary; lower tokenizer.min_count"
        )
    unit = index.unit[np.array(found)]
    group = np.repeat(np.arange(len(groups)), [len(g) for g, _ in groups])
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    k = len(groups[0][0]) - 1
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    hits = (group[top] == group[:, None]).mean(axis=1)
    count_of = np.repeat([n for _, n in groups], [len(g) for g, _ in groups])
    return {
        f"eval/planted/precision/count_{n}": float(hits[count_of == n].mean())
        for n in sorted(set(count_of))
    }
