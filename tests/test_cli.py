"""The command line as a user meets it: run dirs, sweeps, --help, and bad input answered with
one clear line and exit code 2, never a traceback or a hang."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlp_adagrad.data import load_corpus
from tests.helpers import make_config, run_cli, run_script, tiny_rows

SMALL = ["+experiment=debug"]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_cli_run_writes_a_microsecond_run_dir(tmp_path):
    proc = run_cli(*SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path / "outputs")
    assert len(run_dir.name.split("-")[-1]) == 6  # HH-MM-SS-ffffff: parallel runs never collide
    for name in (
        ".hydra/config.yaml",
        "config.yaml",
        "train.log",
        "tb",
        "tokenizer.json",
        "metrics.json",
        "token_stats.csv",
        "checkpoints/last.pt",
    ):
        assert (run_dir / name).exists(), name
    log = (run_dir / "train.log").read_text()
    assert "reproduce with: python -m nlp_adagrad.train" in log and "test/accuracy" in log
    # the command ends without the interpreter's teardown (train.console): logs still flushed
    assert "run dir: " in log.splitlines()[-1]


@pytest.mark.slow
def test_sweep_runs_each_optimizer_under_multirun(tmp_path):
    proc = run_cli("-m", "optim=adagrad,sgd", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dirs = run_dirs(tmp_path / "outputs" / "multirun")
    assert len(dirs) == 2
    assert "optim=adagrad" in dirs[0].name and "optim=sgd" in dirs[1].name
    table = run_script("compare_runs.py", str(tmp_path))
    assert table[0].startswith("| optim.lr | optim.name | seeds | test accuracy |")
    assert [row.split("|")[2].strip() for row in table[2:]] == ["adagrad", "sgd"]
    sgd = json.loads((dirs[1] / "metrics.json").read_text())
    assert f"| 1 | {sgd['test/accuracy']:.4f} |" in table[3]  # one seed: the value itself
    # TensorBoard names each run by what it is, not by its timestamp
    assert [next((d / "tb").iterdir()).name for d in dirs] == [
        "bbc_news,logreg,adagrad,lr=5,experiment=debug",
        "bbc_news,logreg,sgd,lr=1,experiment=debug",
    ]


def test_help_lists_groups_and_every_key_with_its_type_default_and_description(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "schema/" not in proc.stdout  # the typed schemas are not options to pick
    assert (
        "  optim      adagrad (default), full_matrix_adagrad, rmsprop, rowwise_adagrad, sgd, "
        "sparse_adam" in proc.stdout
    )
    blocks, block = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("  ") and not line.startswith("    ") and line.endswith(":"):
            block = blocks.setdefault(line.strip().rstrip(":"), {})
        elif line.startswith("    ") and block is not None:
            block[line.split()[0]] = line
    assert blocks["model=fasttext"]["model.dim"].split()[1:4] == ["int", "64", "width"]
    assert blocks["model=glove|skipgram"]["model.dim"].split()[1:4] == ["int", "100", "width"]
    assert set(blocks["task=skipgram"]) == {
        "task.window",
        "task.negative",
        "task.sample",
        "task.kernel",
    }
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("    ")}
    assert "clr = lr / (1 + (step - 1) * lr_decay)" in lines["optim.lr_decay"]
    key_lines = [line for line in proc.stdout.splitlines() if line.startswith("    ")]
    assert all(len(line.split()) >= 4 for line in key_lines)  # every key has a description


def test_console_commands_are_installed():
    bin_dir = Path(sys.executable).parent
    commands = ("train", "predict", "evaluate", "neighbors")
    for name in (f"nlp-adagrad-{command}" for command in commands):
        proc = subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), name


def assert_one_clear_line(proc, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and needle in errors[0], errors
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_file(tmp_path):
    proc = run_cli("data=local", "data.path=nope.csv", cwd=tmp_path)
    assert_one_clear_line(proc, "data.path=nope.csv: no such file")


def test_missing_column(tmp_path, tiny_csv):
    proc = run_cli("data=local", f"data.path={tiny_csv}", "data.text_column=review", cwd=tmp_path)
    assert_one_clear_line(proc, "data.text_column='review' is not a column")


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    proc = run_cli("data=local", f"data.path={empty}", cwd=tmp_path)
    assert_one_clear_line(proc, "holds no examples")


def test_hub_preset_offline_fails_fast(tmp_path):
    start = time.monotonic()
    # port 9 on loopback refuses at once: the same path as a machine with no route to the Hub
    proc = run_cli("data=ag_news", cwd=tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.monotonic() - start < 60
    assert_one_clear_line(proc, "cannot reach the Hugging Face Hub")


def test_hub_loading_code_on_a_local_folder(tmp_path):
    """The preset's loader on files laid out like the Hub's: train/test splits, int labels."""
    folder = tmp_path / "ag_news_copy"
    folder.mkdir()
    rows = tiny_rows()
    for split, part in (("train", rows[::2]), ("test", rows[1::2])):
        (folder / f"{split}.jsonl").write_text(
            "".join(
                json.dumps({"text": r["text"], "label": int(r["label"] == "sport")}) + "\n"
                for r in part
            )
        )
    corpus = load_corpus(make_config("data=ag_news", f"data.hub_path={folder}").data)
    assert set(corpus) == {"train", "test"}
    assert corpus["train"].features["label"].names == ["0", "1"]
    assert len(corpus["test"]) == len(rows) // 2


def test_help_and_a_mistyped_key_are_answered_without_loading_torch():
    code = (
        "import sys\n"
        "from nlp_adagrad.train import cli\n"
        "for argv in (['--help'], ['optim.lrr=1']):\n"
        "    sys.argv = ['nlp_adagrad.train', *argv]\n"
        "    try:\n"
        "        cli()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules, 'datasets' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.splitlines()[-1] == "False False", proc.stderr[-1000:]
