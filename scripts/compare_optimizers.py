"""Markdown table comparing runs (e.g. one optimizer sweep) from their run dirs.

    python -m nlp_adagrad.train -m optim=adagrad,rowwise_adagrad,sgd,rmsprop,sparse_adam
    python scripts/compare_optimizers.py outputs/multirun/<date>/<time>

Reads each run's metrics.json and config.yaml; prints nothing it did not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def slope(m: dict, key: str) -> str:
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    interval = f" [{fmt(low, '.2f')}, {fmt(high, '.2f')}]" if low is not None else ""
    return fmt(m.get(key), ".2f") + interval


def table(run_dirs: list[Path]) -> str:
    lines = [
        "| optimizer | lr | test accuracy | eff_lr/rare | eff_lr/common | rare / common "
        "| slope vs updates [95% CI] | slope vs count [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in run_dirs:
        m = json.loads((run / "metrics.json").read_text())
        optim = yaml.safe_load((run / "config.yaml").read_text())["optim"]
        rare, common = m.get("eff_lr/rare"), m.get("eff_lr/common")
        ratio = rare / common if rare is not None and common else None
        lines.append(
            f"| {optim['name']} | {optim['lr']:g} | {m['test/accuracy']:.4f} "
            f"| {fmt(rare, '.3g')} | {fmt(common, '.3g')} | {fmt(ratio, '.1f')} "
            f"| {slope(m, 'eff_lr/slope_vs_updates')} | {slope(m, 'eff_lr/slope_vs_count')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or folders holding them")
    args = parser.parse_args()
    runs = sorted({p.parent for d in args.dirs for p in d.rglob("metrics.json")})
    if not runs:
        print(
            f"no run dirs (with metrics.json) under {', '.join(map(str, args.dirs))}",
            file=sys.stderr,
        )
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
