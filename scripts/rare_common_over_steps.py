"""How the rare and common rates separate over training: eff_lr/rare, eff_lr/common and their
ratio at each snapshot step, pooled over the runs given (e.g. one config's seeds).

    python -m nlp_adagrad.train -m trainer.seed=0,1,2
    python scripts/rare_common_over_steps.py outputs/multirun/<date>/<time>

Reads the runs' TensorBoard events with TensorBoard's own reader. Each cell is the mean over
the runs, ± the sample standard deviation when there are several; a step some runs lack a
value at (no rare token updated yet) is shown with how many runs have one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def series(logdir: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in acc.Scalars(tag)}


def cell(values: list[float], runs: int, spec: str) -> str:
    if not values:
        return "n/a"
    text = format(statistics.fmean(values), spec)
    if len(values) > 1:
        text += f" ± {format(statistics.stdev(values), spec)}"
    return text + (f" (n={len(values)})" if len(values) < runs else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or folders holding them")
    args = parser.parse_args()
    logdirs = sorted({p.parent for d in args.dirs for p in d.rglob("events.out.tfevents.*")})
    if not logdirs:
        print(f"no TensorBoard events under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    runs = [(series(d, "eff_lr/rare"), series(d, "eff_lr/common")) for d in logdirs]
    steps = sorted({step for rare, _ in runs for step in rare})
    print(f"{len(runs)} runs")
    print("| step | eff_lr/rare | eff_lr/common | rare / common |")
    print("| --- | --- | --- | --- |")
    for step in steps:
        pairs = [(r[step], c[step]) for r, c in runs if step in r and step in c]
        print(
            f"| {step} | {cell([r for r, _ in pairs], len(runs), '.3g')} "
            f"| {cell([c for _, c in pairs], len(runs), '.3g')} "
            f"| {cell([r / c for r, c in pairs], len(runs), '.1f')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
