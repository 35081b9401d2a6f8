"""Inputs that once gave wrong results with exit code 0 (issue 11): a run evaluated on a test
split its changed data file re-drew, a data file read stale from datasets' cache, a resume
that ignored a new learning rate, labels split by whitespace or turned into floats, and a run
that collapsed to one class without a word. Each test fails on the code before the fix."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch

from nlp_adagrad.config import DataFormat, LocalDataConfig
from nlp_adagrad.data import load_corpus
from nlp_adagrad.train import train
from tests.helpers import make_config, tiny_rows


def write_csv(path, rows) -> None:
    lines = ["text,label"] + [f'"{r["text"]}",{r["label"]}' for r in rows]
    path.write_text("\n".join(lines) + "\n")


def evaluate(*args):
    return subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_evaluate_refuses_a_test_split_the_changed_data_file_redraws(tmp_path):
    data = tmp_path / "data.csv"
    rows = tiny_rows(repeat=8)
    write_csv(data, rows)
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_config("data=local", f"data.path={data}", "trainer.epochs=2", "telemetry.every=0")
    train(cfg, run)
    assert evaluate(run).returncode == 0  # the same file: the same split
    write_csv(data, rows[10:])  # rows removed: the stratified split draws other documents
    proc = evaluate(run)
    assert proc.returncode == 2, proc.stdout
    assert "no longer gives the test split" in proc.stderr and "--data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_rewritten_file_with_its_old_mtime_is_read_afresh(tmp_path):
    path = tmp_path / "data.csv"
    first = [{"text": r["text"], "label": "aa" if r["label"] == "sport" else "bb"}
             for r in tiny_rows()]  # fmt: skip
    write_csv(path, first)
    cfg = LocalDataConfig(path=str(path), format=DataFormat.csv)
    assert load_corpus(cfg)["train"].features["label"].names == ["aa", "bb"]
    stat = os.stat(path)
    # same size, same modification time, other labels: what `cp -p` or `touch -d` leaves
    write_csv(path, [{**r, "label": "cc" if r["label"] == "bb" else "aa"} for r in first])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    assert load_corpus(cfg)["train"].features["label"].names == ["aa", "cc"]


def test_resume_trains_on_at_the_new_learning_rate_and_says_so(tmp_path, caplog):
    base = ["data.max_examples=200", "trainer.epochs=2", "telemetry.every=0"]
    first = tmp_path / "first"
    first.mkdir()
    train(make_config(*base, "trainer.max_steps=5"), first)
    finals = {}
    for lr in (5, 50):
        out = tmp_path / f"lr{lr}"
        out.mkdir()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nlp_adagrad"):
            train(make_config(*base, f"trainer.resume={first}", f"optim.lr={lr}"), out)
        finals[lr] = torch.load(out / "checkpoints/last.pt", weights_only=True)
        assert finals[lr]["optimizer"]["param_groups"][0]["lr"] == lr
        assert ("optim.lr 5.0 -> 50.0 from step 6 on" in caplog.text) == (lr == 50)
    table = "embedding.weight"
    assert not torch.equal(finals[5]["model"][table], finals[50]["model"][table])


def test_numeric_labels_stay_integers_and_whitespace_does_not_split_a_class(tmp_path, caplog):
    rows = tiny_rows(repeat=6)
    numeric = tmp_path / "numeric.csv"
    lines = ["text,label"] + [f'"{r["text"]}",{1 if r["label"] == "sport" else 2}' for r in rows]
    numeric.write_text("\n".join([*lines, '"a row whose label is blank",']) + "\n")
    corpus = load_corpus(LocalDataConfig(path=str(numeric), format=DataFormat.csv))
    assert corpus["train"].features["label"].names == ["1", "2"]  # not 1.0, 2.0
    spaced = tmp_path / "spaced.csv"
    # the same class written with a trailing space, and one only differing by case
    write_csv(spaced, [{**r, "label": r["label"] + (" " * (i % 2))} for i, r in enumerate(rows)])
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(LocalDataConfig(path=str(spaced), format=DataFormat.csv))
    assert corpus["train"].features["label"].names == ["business", "sport"]
    assert "differ only by case" not in caplog.text
    cased = tmp_path / "cased.csv"
    write_csv(cased, [{**r, "label": "Sport" if i < 2 else r["label"]} for i, r in enumerate(rows)])
    with caplog.at_level(logging.WARNING):
        load_corpus(LocalDataConfig(path=str(cased), format=DataFormat.csv, test_fraction=0.5))
    assert "differ only by case are separate classes: Sport / sport" in caplog.text


def test_evaluate_maps_integer_labels_onto_a_run_trained_on_a_column_with_a_blank(tmp_path):
    rows = tiny_rows(repeat=6)
    data = tmp_path / "train.csv"
    lines = ["text,label"] + [f'"{r["text"]}",{1 if r["label"] == "sport" else 2}' for r in rows]
    data.write_text("\n".join([*lines, '"blank label",']) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    train(make_config("data=local", f"data.path={data}", "trainer.epochs=5"), run)
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("\n".join(lines[:9]) + "\n")  # ints, no blank: read as int64
    proc = evaluate(run, "--data", held_out)
    assert proc.returncode == 0, proc.stderr
    assert "N\t8" in proc.stdout and "skipped" not in proc.stderr


def test_a_run_whose_predictions_collapse_to_one_class_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nlp_adagrad.train"):
        metrics = train(
            make_config("optim=sgd", "data.max_examples=300", "telemetry.every=0"), tmp_path
        )
    assert metrics["test/predicted_classes"] == 1
    warnings = [r.getMessage() for r in caplog.records if "every test prediction" in r.message]
    assert len(warnings) == 1 and "model.mode=sum optim.lr=0.01" in warnings[0]


def test_an_overflowed_accumulator_stops_the_run_instead_of_a_finite_wrong_result(tmp_path):
    """optim.weight_decay=1e30 overflows Adagrad's G to inf: every later step of those rows
    is 0 while the loss stays finite (it used to exit 0 at chance accuracy, every rate 0)."""
    import pytest

    from nlp_adagrad.guard import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"optimizer state sum of .*optim\.weight_decay"):
        train(make_config("+experiment=debug", "optim.weight_decay=1e30"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
