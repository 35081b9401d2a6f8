"""Runs compared from their run dirs, seeds pooled: mean and spread over seeds, as a Markdown
table (`scripts/compare_runs.py`, and the tables of `python -m nlp_adagrad.report`).

    python -m nlp_adagrad.train -m optim=adagrad,sgd trainer.seed=0,1,2
    python scripts/compare_runs.py outputs/multirun/<date>/<time>

Runs are grouped by their config without `trainer.seed` (`--pool data.seed` pools data splits
too); the first columns name each group by the config keys whose values differ between
groups. A number is the mean over the group's seeds, followed, when there are several, by
the sample standard deviation and [min, max]: the spread a rerun with another seed shows,
which a bootstrap over one run's tokens understates 2-3x (DESIGN section 5). Reads each
run's metrics.json and config.yaml; prints nothing it did not read.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

import yaml

# Keys that say how a run was carried out, not what it computes
NOT_A_GROUP = {"trainer.progress", "trainer.num_threads", "trainer.resume"}
COLUMNS = [  # (header, metric key, format)
    ("test accuracy", "test/accuracy", ".4f"),
    ("rare / common, first snapshot", "eff_lr/rare_to_common_first", ".1f"),
    ("rare / common, end", "eff_lr/rare_to_common", ".1f"),
    ("eff_lr/rare", "eff_lr/rare", ".3g"),
    ("eff_lr/common", "eff_lr/common", ".3g"),
    ("slope vs updates", "eff_lr/slope_vs_updates", ".2f"),
    ("slope vs count", "eff_lr/slope_vs_count", ".2f"),
]
WORD_COLUMNS = [  # task=skipgram / glove runs: the vectors' scores first
    ("WS353 rho", "eval/ws353/rho", ".3f"),
    ("SimLex rho", "eval/simlex/rho", ".3f"),
    ("analogy acc", "eval/analogy/accuracy", ".3f"),
    *COLUMNS[1:],
]


def flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def natural(path: Path) -> list:
    """Sort key that puts sweep job 2_... before 10_...."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def summary(values: list[float | None], spec: str) -> str:
    """mean ± sd [min, max] of the defined values; `(n of N)` when some runs lack one."""
    defined = [v for v in values if v is not None]
    missing = f" (n={len(defined)} of {len(values)})" if len(defined) < len(values) else ""
    if not defined:
        return "n/a"
    mean = format(statistics.fmean(defined), spec)
    if len(defined) == 1:
        return mean + missing
    sd = format(statistics.stdev(defined), spec)
    return f"{mean} ± {sd} [{format(min(defined), spec)}, {format(max(defined), spec)}]{missing}"


def columns_for(all_metrics: list[dict]) -> list[tuple[str, str, str]]:
    """The classifier's columns, or for word-vector runs their scores (and on data=planted
    the precision per frequency level); a column no run has a finite value for is left out."""
    words = any("eval/ws353/rho" in m for m in all_metrics)
    columns = list(WORD_COLUMNS if words else COLUMNS)
    planted = sorted(
        {k for m in all_metrics for k in m if k.startswith("eval/planted/precision/count_")},
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    columns += [(f"planted P@k, {k.rsplit('/', 1)[1]}", k, ".3f") for k in planted]

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    return [c for c in columns if any(finite(m.get(c[1])) for m in all_metrics)]


def load_runs(run_dirs: list[Path]) -> list[tuple[dict, dict]]:
    """(flat config, metrics) of each run dir."""
    return [
        (
            flatten(yaml.safe_load((run / "config.yaml").read_text())),
            json.loads((run / "metrics.json").read_text()),
        )
        for run in run_dirs
    ]


def group_runs(
    runs: list[tuple[dict, dict]], pooled: tuple[str, ...] = ("trainer.seed",)
) -> tuple[list[str], list[tuple[list, list[int]]]]:
    """(the config keys that tell groups apart, [(their values, indices of the group's runs)]):
    runs that differ only in `pooled` keys form one group."""
    keys = sorted({k for config, _ in runs for k in config} - NOT_A_GROUP - set(pooled))
    # a key varies when runs that have it disagree (optimizer-specific keys exist in some only)
    varying = [k for k in keys if len({json.dumps(c[k]) for c, _ in runs if k in c}) > 1]
    groups: dict[str, tuple[list, list[int]]] = {}
    for i, (config, _) in enumerate(runs):
        values = [config.get(k) for k in varying]
        groups.setdefault(json.dumps(values), (values, []))[1].append(i)
    return varying, list(groups.values())


def table(
    run_dirs: list[Path],
    pooled: tuple[str, ...] = ("trainer.seed",),
    columns: list[tuple[str, str, str]] | None = None,
) -> str:
    """The Markdown table of the runs in `run_dirs` (`runs_table`)."""
    return runs_table(load_runs(run_dirs), pooled, columns)


def runs_table(
    runs: list[tuple[dict, dict]],
    pooled: tuple[str, ...] = ("trainer.seed",),
    columns: list[tuple[str, str, str]] | None = None,
) -> str:
    """The Markdown table of (flat config, metrics) runs: a row per group, the group's seeds
    summarised in each column (`columns`: (header, metric key, format); the classifier's or
    word vectors' by default)."""
    varying, groups = group_runs(runs, pooled)
    columns = columns or columns_for([metrics for _, metrics in runs])
    label_headers = varying or ["runs"]
    lines = [
        "| " + " | ".join([*label_headers, "seeds", *(h for h, _, _ in columns)]) + " |",
        "| " + " | ".join(["---"] * (len(label_headers) + 1 + len(columns))) + " |",
    ]
    for values, members in groups:
        names = [str(v) for v in values] or ["all"]
        cells = [summary([runs[i][1].get(key) for i in members], spec) for _, key, spec in columns]
        lines.append("| " + " | ".join([*names, str(len(members)), *cells]) + " |")
    return "\n".join(lines)


def find_runs(dirs: list[Path]) -> list[Path]:
    """Run dirs (holding metrics.json) under `dirs`, sweep jobs in their natural order."""
    return sorted({p.parent for d in dirs for p in d.rglob("metrics.json")}, key=natural)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or folders holding them")
    parser.add_argument(
        "--pool",
        action="append",
        default=[],
        help="a config key whose values are pooled like seeds (trainer.seed always is)",
    )
    args = parser.parse_args()
    runs = find_runs(args.dirs)
    if not runs:
        print(
            f"no run dirs (with metrics.json) under {', '.join(map(str, args.dirs))}",
            file=sys.stderr,
        )
        return 2
    print(table(runs, ("trainer.seed", *args.pool)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
