"""Inputs that once ended in a traceback (issue 11), each now one line and an exit code:
2 for bad input, 130 for Ctrl-C or SIGTERM (after a checkpoint and the command that resumes)."""

from __future__ import annotations

import errno
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest

from nlp_adagrad.checkpoint import load_checkpoint
from nlp_adagrad.errors import UserError, os_error_line
from nlp_adagrad.train import train
from tests.helpers import QUIET, make_config, run_cli

SMALL = ["+experiment=debug"]


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(make_config(*SMALL), run)
    return run


@pytest.mark.parametrize("stdin", [None, ""])
def test_predict_on_empty_input(small_run, tmp_path, stdin):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [] if stdin == "" else [str(empty)]
    proc = subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.predict", str(small_run), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {'standard input' if stdin == '' else empty} holds no lines to classify; "
        "give one document per line"
    ]


def test_predict_flags_lines_without_a_known_token(small_run):
    proc = subprocess.run(
        [sys.executable, "-m", "nlp_adagrad.predict", str(small_run)],
        input="the match\nzzqx qqzz\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "1 of 2 lines have no known token (line 2)" in proc.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim=rmsprop"], "was trained with optim=adagrad, whose state optim=rmsprop"),
        (["model=fasttext", "model.dim=6"], "holds a model=logreg that this config's model"),
    ],
)
def test_resume_with_another_optimizer_or_model_is_refused(small_run, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train(make_config(*SMALL, f"trainer.resume={small_run}", *overrides), tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.seed=-1", r"trainer.seed must lie in \[0, 2\^63\)"),
        ("optim.lr=1e300", "beyond float32's range"),
        ("data.seed=-1", r"data.seed must lie in \[0, 2\^63\)"),
    ],
)
def test_out_of_range_settings(override, message):
    with pytest.raises(UserError, match=message):
        make_config(override)


def test_a_table_larger_than_memory_is_refused_before_allocating(tmp_path):
    cfg = make_config(*SMALL, "model=fasttext", "model.dim=1000000000")
    with pytest.raises(UserError, match=r"need ~[\d.]+ GiB .* lower model.dim"):
        train(cfg, tmp_path)


def test_a_pickle_in_place_of_a_checkpoint_is_named_in_one_line(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"call": print}))
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    assert "holds Python objects beyond tensors" in str(caught.value)
    assert len(str(caught.value)) < 250 and "\n" not in str(caught.value)


def test_a_full_disk_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").symlink_to("/dev/full")  # every write there fails with ENOSPC
    proc = run_cli(*SMALL, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert "No space left on device" in line and "free some space" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_os_error_line_walks_a_chain_to_its_first_cause():
    assert os_error_line(OSError(errno.EIO, "Input/output error")) is None  # not the user's
    wrapped = OSError(errno.EEXIST, "File exists")  # e.g. a clean-up failing after the write
    wrapped.__context__ = OSError(errno.EROFS, "Read-only file system", "/ro/x")
    assert os_error_line(wrapped) == (
        "Read-only file system writing /ro/x; point hydra.run.dir at a writable folder"
    )


def test_a_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    proc = run_cli("hydra.run.dir=afile", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: hydra.run.dir=afile is a file; name a folder (new or empty)"
    ]
    assert (tmp_path / "afile").read_text() == "keep me"


LONG_RUN = [  # 30,000 steps: ~3 s of loop here (3,000 were over before a signal came)
    "data.max_examples=800",
    "trainer.epochs=300",
    "trainer.batch_size=8",
    "telemetry.every=0",
    "trainer.num_threads=1",
]


def start_and_signal(run_dir, sig, *overrides: str) -> subprocess.CompletedProcess:
    """Start a run, send `sig` once its loop runs, and collect what it printed."""
    command = [*QUIET, *LONG_RUN, *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlp_adagrad.train", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "training: steps" in line:
            time.sleep(0.2)
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, "")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    stopped = tmp_path / "stopped"
    proc = start_and_signal(stopped, signal.SIGINT, "telemetry.every=1000")
    assert proc.returncode == 130, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    (line,) = [line for line in proc.stdout.splitlines() if "resume with:" in line]
    assert "interrupted after step" in line and f"trainer.resume={stopped}" in line
    assert (stopped / "checkpoints" / "last.pt").exists()
    # the interrupted run's snapshots are in the telemetry process's event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = (stopped / "tb").iterdir()
    assert list(logdir.glob("*.telemetry"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    steps = [e.step for e in events.Scalars("eff_lr/rare")]
    assert steps[:4] == [1, 2, 3, 5]
    command = line.split("resume with: ", 1)[1].split()
    resumed = run_cli(
        *command[3:], *LONG_RUN, f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (tmp_path / "resumed" / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_stops_the_same_way(tmp_path):
    proc = start_and_signal(tmp_path / "stopped", signal.SIGTERM)
    assert proc.returncode == 130 and "resume with:" in proc.stdout
    assert (tmp_path / "stopped" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("plus", ["", "+"])
def test_an_unknown_key_names_the_closest_real_one_even_with_plus(tmp_path, plus):
    proc = run_cli(f"{plus}optim.lrr=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: optim.lrr is not a key of optim=adagrad; did you mean optim.lr? its keys: name, "
        "lr, weight_decay, maximize, lr_decay, initial_accumulator_value, eps, fused "
        "(python -m nlp_adagrad.train --help lists them all)"
    ]
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(UserError, match="did you mean optim.lr"):
        make_config("+optim.lrr=1")  # past the command line too (tests, other entry points)


def test_a_key_of_another_option_of_the_group(tmp_path):
    proc = run_cli("-m", "optim=adagrad,sgd", "optim.lr_decay=0.1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "optim.lr_decay is not a key of optim=sgd; did you mean optim.linear_decay?" in (
        proc.stderr
    )


def test_a_run_refused_for_bad_input_leaves_no_run_dir_behind(tmp_path):
    proc = run_cli("data=local", "data.path=nope.csv", cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stdout + proc.stderr
    assert list((tmp_path / "outputs").rglob("*.yaml")) == []  # no config.yaml, no .hydra/
    assert list((tmp_path / "outputs").rglob("train.log")) == []


def test_a_test_fraction_too_small_for_the_classes_says_so(tmp_path):
    from nlp_adagrad.data import load_corpus

    with pytest.raises(UserError, match=r"holds out 1 of .* choose data.test_fraction between"):
        load_corpus(make_config("data.test_fraction=0.0001").data)


def test_a_missing_rare_group_is_explained_not_printed_as_nan(tmp_path, tiny_csv, caplog):
    import logging

    cfg = make_config(
        "data=local", f"data.path={tiny_csv}", "data.text_column=body",
        "data.label_column=topic", "telemetry.rare_max_count=1", "trainer.epochs=2",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="nlp_adagrad.train"):
        train(cfg, tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if "test/accuracy" in r.getMessage()]
    assert "rare n/a: no token seen <= 1 times" in line and "nan" not in line


def test_evaluate_prints_whole_class_names_in_the_confusion_matrix():
    import numpy as np

    from nlp_adagrad.evaluate import classification_report, format_report

    report = classification_report(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), k=1)
    text = format_report(report, ["entertainment", "politics"])
    header = text.splitlines()[-3]
    assert "entertainment" in header and "politics" in header


def test_an_absurd_weight_decay_ends_with_one_line_not_a_finite_wrong_result(tmp_path):
    """It overflows Adagrad's accumulator: once this ended with metrics at chance accuracy
    and exit 0; now the guard's one line (test_wrong_results has the in-process side)."""
    proc = run_cli(*SMALL, "optim.weight_decay=1e30", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout[-2000:]
    (line,) = error_lines(proc)
    assert "optimizer state" in line and "optim.weight_decay (now 1e+30)" in line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_diverged_fused_run_is_one_line_and_keeps_its_tensorboard_events(tmp_path):
    """fastText's model at lr 1e38 goes non-finite at step 6 inside the fused C++ steps: the
    guard names it in one line, and the events written before stay on disk (they were lost
    with the unclosed writers, and the telemetry process printed a traceback)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli(
        *SMALL,
        "model=fasttext",
        "optim.lr=1e38",
        "trainer.log_every=2",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stdout[-2000:]
    (line,) = error_lines(proc)
    diverged = int(re.search(r"non-finite loss at step (\d+)", line)[1])
    assert "Traceback" not in proc.stdout + proc.stderr
    (logdir,) = (tmp_path / "run" / "tb").iterdir()
    events = EventAccumulator(str(logdir))
    events.Reload()
    logged = [e.step for e in events.Scalars("train/loss")]
    assert logged[:2] == [2, 4] and max(logged) < diverged
    snapshots = [e.step for e in events.Scalars("eff_lr/common")]
    assert snapshots and max(snapshots) < diverged
