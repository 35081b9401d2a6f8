"""The benchmark script runs, reports the command and machine, and its checks hold at small size:
our Adagrad step equals torch.optim.Adagrad's, step time does not grow with the table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_bench(tmp_path, sections: str):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--sections",
            sections,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("command: python ") and "machine: " in proc.stdout
    return json.loads((tmp_path / "bench.json").read_text())["results"]


def test_micro_benchmarks(tmp_path):
    results = run_bench(tmp_path, "scaling,optimizer,snapshot,limit,memory")
    assert all(r["max_weight_diff"] < 1e-5 for r in results["optimizer"])
    same = [r["step_ms"] for r in results["scaling"] if r["ids"] == "same batch"]
    assert max(same) / min(same) < 2.0  # generous: a shared CI core is noisy
    assert {r["optimizer"] for r in results["memory"]} == {"Adagrad", "RowwiseAdagrad"}
    rowwise = next(r for r in results["memory"] if r["optimizer"] == "RowwiseAdagrad")
    assert rowwise["state_mb"] < rowwise["weights_mb"] / 32  # one accumulator per row
    plain, histograms, handing = (r["us"] for r in results["snapshot"])
    assert 0 < handing < plain < histograms  # handing a reading on is no summary's work
    assert (tmp_path / "bench.md").read_text().startswith("Command: `python ")


@pytest.mark.slow
def test_start_up_end_to_end_and_telemetry_sections(tmp_path):
    results = run_bench(tmp_path, "startup,e2e,telemetry")
    before, after = results["startup"]
    assert before["tree"].startswith("before") and after["tree"] == "after (this tree)"
    assert after["accuracy"] == before["accuracy"]  # the same run, only faster
    assert after["to_metrics"] < before["to_metrics"]
    assert "training loop and final evaluation" in after["phases"]
    ours = [r for r in results["e2e"] if r["tool"].startswith("nlp_adagrad")]
    assert [(r["corpus"], r["threads"]) for r in ours] == [
        ("bbc_news", 1),
        ("bbc_news", 2),
        ("synthetic", 1),
        ("synthetic", 2),
    ]
    assert all(r["accuracy"] > 0.5 and r["loop_seconds"] < r["seconds"] for r in ours)
    fasttext = [r for r in results["e2e"] if r["tool"].startswith("fastText")]
    # without the bench extra (pip install -e .[bench]) there is no peer to compare with
    if not any(r.get("error") == "not installed" for r in fasttext):
        assert all("x_fasttext_loop" in r for r in ours if "accuracy" in r)
    assert [r["corpus"] for r in results["telemetry"]] == ["bbc_news", "synthetic"]
    assert all("overhead" in r for r in results["telemetry"])
    for r in results["telemetry"]:  # a whole-loop figure comes with the spread of its rounds
        low, high = r["whole_loop_range"]
        assert low <= r["whole_loop"] <= high and r["rounds"] >= 1
