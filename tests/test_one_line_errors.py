"""Inputs that once ended in a traceback (issue 11), each now one line and an exit code:
2 for bad input, 130 for Ctrl-C or SIGTERM (after a checkpoint and the command that resumes)."""

from __future__ import annotations

import errno
import pickle
import signal
import subprocess
import sys
import time

import pytest

from nlp_adagrad.checkpoint import load_checkpoint
from nlp_adagrad.errors import UserError, os_error_line
from nlp_adagrad.train import train
from tests.helpers import QUIET, make_config, run_cli

SMALL = ["data.max_examples=100", "trainer.epochs=1", "telemetry.every=0"]


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


LONG_RUN = [
    "data.max_examples=800",
    "trainer.epochs=30",
    "trainer.batch_size=8",
    "telemetry.every=0",
    "trainer.num_threads=1",
]


def start_and_signal(run_dir, sig) -> subprocess.CompletedProcess:
    """Start a run, send `sig` once its loop runs, and collect what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlp_adagrad.train", *QUIET, *LONG_RUN, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "training: steps" in line:
            time.sleep(0.5)
            proc.send_signal(sig)
            break
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, "")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    stopped = tmp_path / "stopped"
    proc = start_and_signal(stopped, signal.SIGINT)
    assert proc.returncode == 130, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    (line,) = [line for line in proc.stdout.splitlines() if "resume with:" in line]
    assert "interrupted after step" in line and f"trainer.resume={stopped}" in line
    assert (stopped / "checkpoints" / "last.pt").exists()
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
