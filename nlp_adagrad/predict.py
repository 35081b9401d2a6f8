"""`python -m nlp_adagrad.predict RUN_DIR [FILE] [-k K] [-t P] [--explain]`: top-k labels for
each line of text.

Reads FILE, or standard input when FILE is absent; prints one line per input line:
`label probability` pairs, most probable first (fastText's `predict-prob`), only those with
probability >= P (fastText's `-t`; an empty line where none is). `--explain` adds, under each,
every token's share of the top label's logit with its effective learning rate (as Vowpal
Wabbit's `--audit` shows a prediction's features).
"""

from __future__ import annotations

import argparse
import sys

import datasets

from nlp_adagrad.errors import UserError
from nlp_adagrad.inference import explain, load_run, top_k


def read_lines(path: str | None) -> list[str]:
    if path is None:
        return sys.stdin.read().splitlines()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nlp_adagrad.predict", description=__doc__)
    parser.add_argument("run_dir", help="a run dir written by nlp_adagrad.train")
    parser.add_argument("file", nargs="?", help="text, one document per line (default: stdin)")
    parser.add_argument("-k", type=int, default=1, help="labels per line (default: 1)")
    parser.add_argument(
        "-t", type=float, default=0.0, help="print labels with probability >= t only (default: 0)"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="under each line, each token's share of the top label's logit and its eff_lr",
    )
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    try:
        if args.k < 1:
            raise UserError(f"-k must be >= 1, got {args.k}")
        if not 0 <= args.t <= 1:
            raise UserError(f"-t is a probability: give one in [0, 1], got {args.t}")
        run = load_run(args.run_dir)
        lines = read_lines(args.file)
        if not lines:
            source = args.file or "standard input"
            raise UserError(f"{source} holds no lines to classify; give one document per line")
        encoded = run.encode(lines)
        probabilities = run.probabilities(encoded)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for doc, (row, best) in enumerate(zip(probabilities, top_k(probabilities, args.k))):
        print(" ".join(f"{run.class_names[c]} {row[c]:.4f}" for c in best if row[c] >= args.t))
        if args.explain:
            print(explanation(run, encoded, doc, int(best[0])))
    warn_unknown_lines(encoded.lengths)
    return 0


def explanation(run, encoded, doc: int, label: int, shown: int = 20) -> str:
    """Indented table: the tokens pushing hardest toward or away from `label` first."""
    shares, empty = explain(run, encoded, doc)
    shares.sort(key=lambda s: -abs(s.logits[label]))
    name = run.class_names[label]
    lines = [f"  {'token':<24} {'count':>5} {name + ' logit':>14} {'eff_lr':>10}"]
    for s in shares[:shown]:
        lines.append(f"  {s.token:<24} {s.count:>5} {s.logits[label]:>+14.4f} {s.eff_lr:>10.3g}")
    if len(shares) > shown:
        lines.append(f"  ... {len(shares) - shown} more tokens")
    lines.append(f"  {'(no token: the bias)':<24} {'':>5} {empty[label]:>+14.4f}")
    return "\n".join(lines)


def warn_unknown_lines(lengths, shown: int = 5) -> None:
    """Name the lines with no known token: their labels are the class prior (the bias alone),
    which would otherwise read like any other answer."""
    empty = [i + 1 for i, n in enumerate(lengths) if n == 0]
    if empty:
        listed = ", ".join(map(str, empty[:shown])) + (", ..." if len(empty) > shown else "")
        print(
            f"warning: {len(empty)} of {len(lengths)} lines have no known token (line "
            f"{listed}); their labels are the training prior, not a reading of the text",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
