"""Bad input: each case gets one clear line naming what is wrong and what to do (exit code 2),
or, where the data stays usable, a warning with a count."""

from __future__ import annotations

import json
import logging

import pytest

from nlp_adagrad.data import load_corpus
from nlp_adagrad.errors import UserError
from nlp_adagrad.train import train
from tests.helpers import make_config, run_cli, tiny_rows


def local(path, *extra):
    return make_config("data=local", f"data.path={path}", *extra).data


def write_csv(path, rows, encoding="utf-8"):
    lines = ["text,label"] + [f'"{r["text"]}",{r["label"]}' for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_unreadable_file(tmp_path, monkeypatch, tiny_csv):
    monkeypatch.setattr("nlp_adagrad.data.os.access", lambda path, mode: False)
    with pytest.raises(UserError, match="file is not readable"):
        load_corpus(local(tiny_csv))


def test_wrong_format(tiny_csv):
    with pytest.raises(UserError, match=r"cannot read .* as parquet: .*check data.format"):
        load_corpus(local(tiny_csv, "data.format=parquet"))


def test_binary_file(tmp_path):
    binary = tmp_path / "data.csv"  # named like text, holding bytes
    binary.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(UserError, match="looks binary .* point data.path at the data file"):
        load_corpus(local(binary))
    binary.rename(tmp_path / "model.bin")
    with pytest.raises(UserError, match="cannot tell the format of data.path=model.bin"):
        load_corpus(local(tmp_path / "model.bin"))


def test_non_utf8_text_names_the_fix_and_the_fix_works(tmp_path):
    rows = [{"text": f"caf\u00e9 {r['text']}", "label": r["label"]} for r in tiny_rows()]
    latin = write_csv(tmp_path / "latin.csv", rows, encoding="latin-1")
    with pytest.raises(UserError, match="set data.encoding"):
        load_corpus(local(latin))
    corpus = load_corpus(local(latin, "data.encoding=latin-1"))
    assert "caf\u00e9" in corpus["train"]["text"][0]


def test_single_class(tmp_path):
    one = write_csv(tmp_path / "one.csv", [r for r in tiny_rows() if r["label"] == "sport"])
    with pytest.raises(UserError, match="single class"):
        load_corpus(local(one))


def test_test_labels_unseen_in_training_are_dropped_with_a_count(tmp_path, caplog):
    train_csv = write_csv(tmp_path / "train.csv", tiny_rows())
    test_rows = tiny_rows(1) + [{"text": "a new topic", "label": "weather"}] * 3
    test_csv = write_csv(tmp_path / "test.csv", test_rows)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(local(train_csv, f"data.test_path={test_csv}"))
    assert len(corpus["test"]) == len(tiny_rows(1))
    assert "dropped 3 of 11 rows" in caplog.text


def test_empty_and_huge_documents_are_counted_in_a_warning(tmp_path, caplog):
    rows = (
        tiny_rows() + [{"text": "", "label": "sport"}] * 2 + [{"text": "   ", "label": "business"}]
    )
    rows += [{"text": "goal " * 100_001, "label": "sport"}]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_config(
        "data=local",
        f"data.path={path}",
        "data.format=json",
        "data.test_fraction=0.3",
        "data.seed=1",
        "trainer.epochs=1",
        "telemetry.every=0",
    )
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg, tmp_path)
    assert metrics["train/steps"] > 0
    assert "documents have no known token" in caplog.text
    assert "documents have more than 100000 tokens" in caplog.text


@pytest.mark.parametrize("override", ["optim.lrr=1", "optim.lr=abc", "optim=nosuch"])
def test_unknown_config_key_or_value_exits_2(tmp_path, override):
    proc = run_cli(override, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_missing_label_column(tiny_csv):
    with pytest.raises(UserError, match="data.label_column='stars' is not a column"):
        load_corpus(local(tiny_csv, "data.text_column=body", "data.label_column=stars"))
