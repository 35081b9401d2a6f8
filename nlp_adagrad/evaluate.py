"""`python -m nlp_adagrad.evaluate RUN_DIR`: accuracy, per-class precision/recall/F1, the
confusion matrix and P@k/R@k of a finished run, like fastText's `test`."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import datasets
import numpy as np

from nlp_adagrad.config import DataFormat, LocalDataConfig
from nlp_adagrad.data import (
    label_strings,
    load_corpus,
    normalize_label,
    read_local,
    split_digest,
)
from nlp_adagrad.errors import UserError
from nlp_adagrad.inference import load_run

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ python -m nlp_adagrad.evaluate
@dataclass
class Report:
    num_docs: int
    accuracy: float
    precision: np.ndarray  # per class
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray  # rows: true class, columns: predicted class
    precision_at: dict[int, float]  # P@k
    recall_at: dict[int, float]  # R@k


def classification_report(probabilities: np.ndarray, labels: np.ndarray, k: int) -> Report:
    """fastText-style test figures for single-label data, from class probabilities."""
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_pos = np.diag(confusion).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_pos / confusion.sum(axis=0))
        recall = np.nan_to_num(true_pos / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    precision_at, recall_at = {}, {}
    for j in range(1, min(k, num_classes) + 1):
        hits = (ranked[:, :j] == labels[:, None]).any(axis=1).sum()
        precision_at[j] = float(hits / (j * len(labels)))  # one true label per document
        recall_at[j] = float(hits / len(labels))
    return Report(
        len(labels),
        float(true_pos.sum() / len(labels)),
        precision,
        recall,
        f1,
        confusion.sum(axis=1),
        confusion,
        precision_at,
        recall_at,
    )


def format_report(report: Report, class_names: list[str]) -> str:
    width = max(8, *(len(c) for c in class_names))
    lines = [f"N\t{report.num_docs}"]
    for j in report.precision_at:
        lines += [f"P@{j}\t{report.precision_at[j]:.4f}", f"R@{j}\t{report.recall_at[j]:.4f}"]
    lines += [
        f"accuracy\t{report.accuracy:.4f}",
        "",
        f"{'class':<{width}}  precision  recall  f1      support",
    ]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}  {report.precision[i]:9.4f}  {report.recall[i]:6.4f}  "
            f"{report.f1[i]:6.4f}  {report.support[i]:7d}"
        )
    lines += [
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        " " * width + "  " + " ".join(f"{c:>{max(8, len(c))}}" for c in class_names),
    ]
    for i, name in enumerate(class_names):
        cells = (f"{v:{max(8, len(c))}d}" for v, c in zip(report.confusion[i], class_names))
        lines.append(f"{name:<{width}}  " + " ".join(cells))
    return "\n".join(lines)


def _labelled_texts(run, args) -> tuple[list[str], np.ndarray]:
    """The run's own test split, or --data mapped onto the run's class names."""
    if args.data is None:
        test = load_corpus(run.config.data)["test"]
        names = test.features["label"].names
        if list(names) != run.class_names:
            raise UserError("the run's data now has other classes than it was trained on")
        check_same_test_split(run, test)
        return test["text"], np.asarray(test["label"], dtype=np.int64)
    raw, text_column, label_column = read_local(
        LocalDataConfig(
            path=args.data,
            format=DataFormat(args.format or "auto"),  # auto: from the file name
            text_column=args.text_column,
            label_column=args.label_column,
        )
    )
    ds = raw["train"]
    # runs from before label normalisation may hold names such as "3.0"
    index = {normalize_label(name): i for i, name in enumerate(run.class_names)}
    texts, labels, unknown = [], [], 0
    for text, label in zip(ds[text_column], label_strings(ds, label_column)):
        if label in index:
            texts.append(text or "")
            labels.append(index[label])
        else:
            unknown += 1
    if unknown:
        log.warning(
            "skipped %d rows whose label the run never saw (classes: %s)",
            unknown,
            ", ".join(run.class_names),
        )
    if not texts:
        raise UserError(f"{args.data} has no row with a label the run knows")
    return texts, np.asarray(labels, dtype=np.int64)


def check_same_test_split(run, test: datasets.Dataset) -> None:
    """Refuse to score a run on a test split other than the one it held out: a data file
    edited since training re-splits, and documents it trained on would count as test."""
    recorded = run.test_split
    if recorded is None:
        log.warning(
            "this run predates test-split records: cannot check that its data still gives "
            "the test split it held out"
        )
        return
    if split_digest(test) != recorded["digest"]:
        raise UserError(
            f"the run's data no longer gives the test split it held out ({recorded['documents']} "
            f"documents then, {len(test)} now, different content): the data changed since "
            f"training, and its new split would score documents the run trained on; "
            f"evaluate held-out data with --data FILE"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nlp_adagrad.evaluate",
        description="Accuracy, per-class precision/recall/F1, confusion matrix and P@k/R@k of "
        "a run on its own test split or on --data (like fastText's test).",
    )
    parser.add_argument("run_dir", help="a run dir written by nlp_adagrad.train")
    parser.add_argument("--data", help="a labelled file (csv, json, parquet or fastText text)")
    parser.add_argument("--format", choices=["csv", "json", "parquet", "text"])
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("-k", type=int, default=1, help="report P@1..P@k and R@1..R@k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    datasets.disable_progress_bars()
    try:
        if args.k < 1:
            raise UserError(f"-k must be >= 1, got {args.k}")
        run = load_run(args.run_dir)
        texts, labels = _labelled_texts(run, args)
        probabilities = run.probabilities(run.encode(texts, labels.tolist()))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(format_report(classification_report(probabilities, labels, args.k), run.class_names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
