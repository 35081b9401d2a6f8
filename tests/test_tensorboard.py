"""What a user sees in TensorBoard, read back through TensorBoard's own HTTP data endpoints on
a loopback port: every plugin the README names, served from a real (small) run.

The rare/common chart is checked as a person reads it: the custom-scalars layout's first chart
holds exactly two series, rare and common, which start at step 1 and separate over training.
Skipped, with TensorBoard's own reason, where it cannot start.
"""

from __future__ import annotations

import struct
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from nlp_adagrad.tensorboard_server import (
    TensorBoardUnavailable,
    get,
    get_json,
    post_json,
    serve,
)
from nlp_adagrad.train import train
from tests.helpers import make_config, run_script, table_cells


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir, metrics) of a BBC News slice trained with early snapshots."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_config("data.max_examples=300", "trainer.epochs=3", "telemetry.every=10")
    return run_dir, train(cfg, run_dir)


@pytest.fixture(scope="module")
def served(trained):
    """(base URL, run name, metrics) of that run, served by TensorBoard."""
    run_dir, metrics = trained
    try:
        with serve(run_dir / "tb") as base:
            (run,) = get_json(base, "/data/runs")
            yield base, run, metrics
    except TensorBoardUnavailable as e:
        pytest.skip(f"tensorboard could not start here: {e}")


def test_every_plugin_the_readme_names_is_active(served):
    base, _, _ = served
    # the Projector decides it is active in a background thread started by the first listing
    deadline = time.monotonic() + 30
    while not (listing := get_json(base, "/data/plugins_listing"))["projector"]["enabled"]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for plugin, name in [
        ("custom_scalars", "Custom Scalars"),
        ("scalars", "Scalars"),
        ("histograms", "Histograms"),
        ("distributions", "Distributions"),
        ("images", "Images"),
        ("hparams", "HParams"),
        ("text", "Text"),
        ("projector", "Projector"),
    ]:
        assert f"**{name}**" in readme, name  # the README's list of what is where
        assert listing[plugin]["enabled"], plugin


def test_rare_and_common_are_one_chart_of_two_series_that_separate(served):
    base, run, metrics = served
    layout = get_json(base, "/data/plugin/custom_scalars/layout")
    chart = layout["category"][0]["chart"][0]
    assert "rare" in chart["title"] and "common" in chart["title"]
    series = {}
    for regex in chart["multiline"]["tag"]:
        found = get_json(base, "/data/plugin/custom_scalars/scalars", run=run, tag=regex)
        series.update(found["tag_to_events"])
    assert sorted(series) == ["eff_lr_log10/common", "eff_lr_log10/rare"]
    rare = {step: value for _, step, value in series["eff_lr_log10/rare"]}
    common = {step: value for _, step, value in series["eff_lr_log10/common"]}
    steps = sorted(rare)
    assert steps[:4] == [1, 2, 3, 5]  # early snapshots: the adaptation as it happens
    gap = [rare[s] - common[s] for s in steps]  # log10(rare / common)
    assert gap[-1] > gap[0] + np.log10(2)  # the two lines separate over training
    assert gap[0] == pytest.approx(np.log10(metrics["eff_lr/rare_to_common_first"]), abs=1e-6)
    assert gap[-1] == pytest.approx(np.log10(metrics["eff_lr/rare_to_common"]), abs=1e-6)


def test_scalars_histograms_and_distributions_read_back(served):
    base, run, metrics = served
    tags = get_json(base, "/data/plugin/scalars/tags")[run]
    assert {"eff_lr/slope_vs_updates", "eff_lr/slope_vs_count", "eff_lr/rare"} <= set(tags)
    slope = get_json(base, "/data/plugin/scalars/scalars", run=run, tag="eff_lr/slope_vs_count")
    assert len(slope) > 3 and slope[-1][2] == pytest.approx(metrics["eff_lr/slope_vs_count"])
    hist_tags = get_json(base, "/data/plugin/histograms/tags")[run]
    assert "eff_lr_log10_hist/count_1e0" in hist_tags
    hist = get_json(
        base, "/data/plugin/histograms/histograms", run=run, tag="eff_lr_log10_hist/count_1e0"
    )
    edges = [bucket[0] for bucket in hist[-1][2]]
    assert min(edges) > 0 and max(edges) < 12  # log10 of the rates: a readable axis
    dist = get_json(
        base, "/data/plugin/distributions/distributions", run=run, tag="eff_lr_log10_hist/count_1e0"
    )
    assert len(dist) == len(hist)


def test_images_text_hparams_and_projector_read_back(served):
    base, run, metrics = served
    images = get_json(
        base, "/data/plugin/images/images", run=run, tag="eff_lr/vs_updates_and_count"
    )
    png = get(f"{base}/data/plugin/images/individualImage?{images[-1]['query']}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eff_lr/buckets/text_summary" in get_json(base, "/data/plugin/text/tags")[run]
    experiment = post_json(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [info["name"] for info in experiment["hparamInfos"]]
    assert {"optim.name", "optim.lr", "model.name", "trainer.batch_size"} <= set(names)
    assert len(names) <= 12  # the keys a user varies, not all ~40
    metric_tags = [info["name"]["tag"] for info in experiment["metricInfos"]]
    assert metric_tags[0] == "test/accuracy" and "eff_lr/rare_to_common" in metric_tags[:5]
    info = get_json(base, "/data/plugin/projector/info", run=run)
    (embedding,) = info["embeddings"]
    rows, dim = embedding["tensorShape"]
    name = urllib.parse.quote(embedding["tensorName"])
    tensor = get(f"{base}/data/plugin/projector/tensor?run={urllib.parse.quote(run)}&name={name}")
    assert len(tensor) == rows * dim * struct.calcsize("f")
    metadata = get(
        f"{base}/data/plugin/projector/metadata?run={urllib.parse.quote(run)}&name={name}"
    )
    lines = metadata.decode().splitlines()
    assert lines[0] == "token\tcount\tbucket\teff_lr\tlog10_eff_lr" and len(lines) == rows + 1


def test_rare_common_over_steps_reads_the_separation_from_the_events(trained):
    run_dir, metrics = trained
    rows = [table_cells(line) for line in run_script("rare_common_over_steps.py", str(run_dir))[3:]]
    assert [row[0] for row in rows[:4]] == ["1", "2", "3", "5"]
    assert rows[0][3] == f"{metrics['eff_lr/rare_to_common_first']:.1f}"
    assert rows[-1][3] == f"{metrics['eff_lr/rare_to_common']:.1f}"
