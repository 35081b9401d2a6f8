"""Run the experiments of conf/experiment/ and build their report, in one command:

    python scripts/experiments.py -o outputs/experiments            # all seven, ~12 min
    python scripts/experiments.py -o outputs/experiments canyon saddle

Each experiment file's header holds the command(s) that reproduce it (every comment line with
`python -m nlp_adagrad.train`); each is run as written, its sweep put under OUT/runs/<name>/,
then `python -m nlp_adagrad.report OUT/runs -o OUT` writes OUT/report.html and OUT/report.md.
Prints each command, its wall time and the machine.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nlp_adagrad.report import CLAIMS, TRAIN, experiment_file  # noqa: E402
from scripts.bench import machine_line  # noqa: E402

EXPERIMENTS = REPO / "conf" / "experiment"


def header_commands(name: str) -> list[list[str]]:
    """The argument lists of the training commands in an experiment file's header."""
    commands, _ = experiment_file(name)
    return [shlex.split(command.removeprefix(TRAIN)) for command in commands]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(CLAIMS), help="experiments to run")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "outputs" / "experiments")
    args = parser.parse_args()
    unknown = [n for n in args.names if not (EXPERIMENTS / f"{n}.yaml").is_file()]
    if unknown:
        print(f"error: no conf/experiment/{unknown[0]}.yaml", file=sys.stderr)
        return 2
    print(f"command: python scripts/experiments.py {' '.join(sys.argv[1:])}")
    print(f"machine: {machine_line()}")
    started = time.perf_counter()
    for name in args.names:
        for k, arguments in enumerate(header_commands(name)):
            sweep = args.out / "runs" / f"{name}" / str(k)
            where = "hydra.sweep.dir" if "-m" in arguments else "hydra.run.dir"
            command = [sys.executable, "-m", "nlp_adagrad.train", *arguments, f"{where}={sweep}"]
            if where == "hydra.run.dir":
                command.append("trainer.progress=false")
            print("$ python -m nlp_adagrad.train " + " ".join(arguments), flush=True)
            t = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    report = [
        sys.executable,
        "-m",
        "nlp_adagrad.report",
        str(args.out / "runs"),
        "-o",
        str(args.out),
    ]
    if subprocess.run(report, cwd=REPO).returncode != 0:
        return 1
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
