"""`python -m nlp_adagrad.neighbors RUN_DIR [WORD ...] [-k K] [--analogy A B C]`: nearest
neighbours of words by cosine, and analogies, from a word-vector run's vectors.txt (or any
word2vec text file), like fastText's `nn` and `analogies`.

With no WORD and no --analogy, reads queries from standard input, one per line: one word for
its neighbours, three words `A B C` for the analogy A - B + C (fastText's order: `berlin
germany france` asks for the capital of France). Query words are folded to lower case when
the run's tokenizer lower-cased its corpus. Words not in the vocabulary are named on stderr
and the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nlp_adagrad.errors import UserError
from nlp_adagrad.words.evaluation import VectorIndex
from nlp_adagrad.words.vectors import VECTORS_FILE, read_word2vec_text


def load_index(path_str: str) -> VectorIndex:
    """The vectors of a run dir (its vectors.txt) or of a word2vec text file."""
    path = Path(path_str).expanduser()
    file = path / VECTORS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(
            f"{path_str} has no {VECTORS_FILE}: give the run dir of a finished task=skipgram "
            f"or task=glove run, or a word2vec text file"
        )
    words, vectors = read_word2vec_text(file)
    lowercase = True
    config = file.parent / "config.yaml"
    if config.is_file():  # the run says whether its tokenizer folded case
        import yaml

        lowercase = bool(yaml.safe_load(config.read_text())["tokenizer"]["lowercase"])
    return VectorIndex.build(words, vectors, np.zeros(len(words)), lowercase)


def neighbours(index: VectorIndex, words: list[str], k: int) -> tuple[list[str], list[str]]:
    """(output lines, unknown words) for one query: a word, or an analogy A B C."""
    found = [index.find(w) for w in words]
    unknown = [w for w, i in zip(words, found) if i is None]
    if unknown:
        return [], unknown
    if len(found) == 1:
        query, title = index.unit[found[0]], f"nearest to {words[0]}:"
    else:
        a, b, c = (index.unit[i] for i in found)
        query, title = a - b + c, f"{words[0]} - {words[1]} + {words[2]}:"
    lines = [title] + [f"  {w:<24} {s:.4f}" for w, s in index.nearest(query, k, tuple(found))]
    return lines, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nlp_adagrad.neighbors", description=__doc__)
    parser.add_argument("run_dir", help="a task=skipgram/glove run dir, or a vectors file")
    parser.add_argument("words", nargs="*", help="words whose neighbours to show")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument(
        "--analogy", nargs=3, metavar=("A", "B", "C"), help="the words nearest A - B + C"
    )
    args = parser.parse_args(argv)
    try:
        if args.k < 1:
            raise UserError(f"-k must be >= 1, got {args.k}")
        index = load_index(args.run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    queries = [[w] for w in args.words] + ([args.analogy] if args.analogy else [])
    if not queries:
        queries = [line.split() for line in sys.stdin if line.strip()]
    missing = []
    for words in queries:
        if len(words) not in (1, 3):
            print(
                f"error: a query is one word or three (A B C), got {' '.join(words)!r}",
                file=sys.stderr,
            )
            return UserError.exit_code
        lines, unknown = neighbours(index, words, args.k)
        if lines:
            print("\n".join(lines))
        missing += unknown
    if missing:
        print(f"error: not in the vocabulary: {', '.join(missing)}", file=sys.stderr)
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
