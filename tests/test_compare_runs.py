"""scripts/compare_runs.py: runs grouped by config without the seed, each number the mean over
seeds with its sample standard deviation and range, read from run dirs written here."""

from __future__ import annotations

import json

import yaml

from tests.helpers import run_script, table_cells


def write_run(folder, optim: str, lr: float, seed: int, metrics: dict) -> None:
    folder.mkdir(parents=True)
    config = {"optim": {"name": optim, "lr": lr}, "trainer": {"seed": seed, "progress": False}}
    if optim == "adagrad":
        config["optim"]["lr_decay"] = 0.0  # a key only some runs have does not name a group
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_seeds_are_pooled_into_mean_sd_and_range(tmp_path):
    slopes = {"adagrad": [-1.0, -1.2, -1.1], "sgd": [0.0, 0.0, 0.0]}
    for job, (optim, lr) in enumerate([("adagrad", 5.0), ("sgd", 1.0)]):
        for seed, slope in enumerate(slopes[optim]):
            metrics = {"test/accuracy": 0.9, "eff_lr/slope_vs_updates": slope}
            if not (optim == "adagrad" and seed == 2):
                metrics["eff_lr/rare_to_common_first"] = 10.0 + seed
            write_run(tmp_path / f"{job * 3 + seed}_run", optim, lr, seed, metrics)
    out = run_script("compare_runs.py", str(tmp_path))
    header = table_cells(out[0])
    assert header[:3] == ["optim.lr", "optim.name", "seeds"]  # what varies, not the seed
    adagrad = dict(zip(header, table_cells(out[2])))
    assert adagrad["optim.name"] == "adagrad" and adagrad["seeds"] == "3"
    assert adagrad["slope vs updates"] == "-1.10 ± 0.10 [-1.20, -1.00]"
    assert adagrad["rare / common, first snapshot"] == "10.5 ± 0.7 [10.0, 11.0] (n=2 of 3)"
    assert len(out) == 4  # header, rule, two groups


def test_word_vector_runs_show_their_scores_and_the_planted_levels(tmp_path):
    for seed, precision in enumerate([0.5, 0.7]):
        metrics = {
            "eval/ws353/rho": float("nan"),  # data=planted: no benchmark word, left out
            "eval/analogy/accuracy": 0.03,
            "eval/planted/precision/count_100": 1.0,
            "eval/planted/precision/count_5": precision,
        }
        write_run(tmp_path / f"{seed}_run", "adagrad", 0.1, seed, metrics)
    header, _, row = run_script("compare_runs.py", str(tmp_path))
    assert table_cells(header) == [
        "runs",
        "seeds",
        "analogy acc",
        "planted P@k, count_5",
        "planted P@k, count_100",
    ]
    assert table_cells(row)[3] == "0.600 ± 0.141 [0.500, 0.700]"
