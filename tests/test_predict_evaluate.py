"""`nlp_adagrad.predict` and `nlp_adagrad.evaluate` on a trained run, and on a non-run dir."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nlp_adagrad.evaluate import classification_report
from nlp_adagrad.train import train
from tests.helpers import make_config, tiny_rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    path = run / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    cfg = make_config(
        "data=local",
        f"data.path={path}",
        "data.format=json",
        "data.test_fraction=0.25",
        "trainer.epochs=20",
        "trainer.batch_size=4",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=100",
        "telemetry.every=0",
    )
    train(cfg, run)
    return run


def command(module, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", f"nlp_adagrad.{module}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_predict_prints_top_k_labels_with_probabilities_per_line(run_dir, tmp_path):
    text = "the striker scored a goal for the team\nthe bank cut rates and shares fell\n"
    proc = command("predict", str(run_dir), "-k", "2", stdin=text)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    first, second = (line.split() for line in lines)
    assert first[0] == "sport" and second[0] == "business"
    probs = [float(first[1]), float(first[3])]
    assert probs[0] >= probs[1] and abs(sum(probs) - 1) < 1e-3  # two classes: all the mass
    (tmp_path / "in.txt").write_text(text)
    assert command("predict", str(run_dir), str(tmp_path / "in.txt")).stdout.split()[::2] == [
        "sport",
        "business",
    ]


def test_evaluate_prints_fasttext_style_report(run_dir):
    proc = command("evaluate", str(run_dir), "-k", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("N\t12", "P@1\t", "R@2\t1.0000", "accuracy\t", "precision", "confusion"):
        assert needle in out, needle


def test_evaluate_on_another_labelled_file(run_dir, tmp_path):
    csv = tmp_path / "more.csv"
    csv.write_text(
        "body,topic\nfans cheered the late goal,sport\nthe market fell,business\n"
        "it rained all day,weather\n"
    )
    proc = command(
        "evaluate",
        str(run_dir),
        "--data",
        str(csv),
        "--text-column",
        "body",
        "--label-column",
        "topic",
    )
    assert proc.returncode == 0, proc.stderr
    assert "N\t2" in proc.stdout and "skipped 1 rows" in proc.stderr


@pytest.mark.parametrize("module", ["predict", "evaluate"])
def test_a_dir_that_is_not_a_run_fails_clearly(tmp_path, module):
    proc = command(module, str(tmp_path), stdin="")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a finished nlp_adagrad run dir (needs tokenizer.json and "
        "checkpoints/last.pt); give the run dir a training run printed at its end"
    ]


def test_classification_report_against_hand_counts():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 1, 1])
    report = classification_report(probs, labels, k=2)
    assert report.accuracy == 0.5
    assert report.confusion.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert report.precision.tolist() == [0.5, 1.0, 0.0]
    assert report.recall[1] == pytest.approx(1 / 3)
    assert report.precision_at == {1: 0.5, 2: 0.5} and report.recall_at == {1: 0.5, 2: 1.0}


def test_explain_splits_the_logits_exactly_into_token_shares_and_the_bias(run_dir):
    import torch

    from nlp_adagrad.inference import explain, load_run

    run = load_run(str(run_dir))
    encoded = run.encode(["the striker scored the winning goal", "shares fell at the bank"])
    for doc in range(2):
        shares, empty = explain(run, encoded, doc)
        ids = torch.from_numpy(encoded.ids[encoded.offsets[doc] : encoded.offsets[doc + 1]])
        logits = run.model(ids, torch.tensor([0]))[0].detach().numpy()
        np.testing.assert_allclose(sum(s.logits for s in shares) + empty, logits, atol=1e-5)
        assert any(s.token.startswith("[bigram bucket") for s in shares)  # ngrams=2 here
        words = [s for s in shares if not s.token.startswith("[")]
        assert words and all(np.isfinite(s.eff_lr) for s in words)  # from token_stats.csv


def test_predict_threshold_and_explain_flags(run_dir):
    text = "the striker scored a goal for the team\n"
    shown = command("predict", str(run_dir), "-k", "2", "-t", "0.5", stdin=text)
    assert shown.returncode == 0 and len(shown.stdout.split()) == 2  # one label passes 0.5
    explained = command("predict", str(run_dir), "--explain", stdin=text).stdout.splitlines()
    assert explained[0].split()[0] == "sport"
    assert explained[1].split()[:3] == ["token", "count", "sport"]
    assert explained[-1].strip().startswith("(no token: the bias)")
    bad = command("predict", str(run_dir), "-t", "2", stdin=text)
    assert bad.returncode == 2 and "-t is a probability" in bad.stderr
