"""Training entry point, `python -m nlp_adagrad.train [overrides]`, and `train(cfg, run_dir)`,
which hands the config to its task's recipe (nlp_adagrad.recipes: each loop written out there).

Before Hydra runs, the command line is checked (`--help`, unknown keys, a taken or impossible
run dir); inside, the run dir is claimed, the config converted and saved, and bad input,
Ctrl-C and a full disk each end in one line with an exit code.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nlp_adagrad.config import (
    CONF_DIR,
    Config,
    check_override_keys,
    help_text,
    register_configs,
    to_config,
)
from nlp_adagrad.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    TrainingInterrupted,
    UserError,
    os_error_line,
)
from nlp_adagrad.run_dir import (
    claim_run_dir,
    detach_file_logs,
    discard_unstarted_run,
    refuse_run_dir_arguments,
    tensorboard_command,
)
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")  # not "__main__" under python -m


def train(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Train with the configured task's recipe; write the run-dir files (DESIGN §4); return
    the final metrics."""
    from nlp_adagrad import figures
    from nlp_adagrad.recipes import DRAW_EFF_LR_FIGURE

    # matplotlib is imported in a worker while this process imports torch and trains
    draws = cfg.telemetry.figure and cfg.task.name in DRAW_EFF_LR_FIGURE
    with figures.background(draws and int(os.environ.get("RANK", "0")) == 0):
        # imported here, not at the top: --help and a mistyped key are answered before
        # torch and datasets load (1.6 s)
        from nlp_adagrad.recipes import recipe

        # what the imports made lives as long as the process: kept out of the cycle
        # collector's full passes, which walked all of it (~0.1 s each) during the run
        gc.freeze()
        return recipe(cfg.task.name)(cfg, run_dir, writer)


register_configs()
_task_started = False  # set once Hydra hands over a composed config


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    global _task_started
    _task_started = True
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    import datasets  # here, not at the top: see train()

    datasets.disable_progress_bars()  # our own bar is the one that matters
    overrides = " ".join(HydraConfig.get().overrides.task)
    try:
        claim_run_dir(run_dir)
    except UserError as e:  # another run's dir: write nothing more into its train.log
        detach_file_logs(run_dir)
        log.error("%s", e)
        sys.exit(e.exit_code)
    log.info("reproduce with: python -m nlp_adagrad.train %s", overrides)
    try:
        config = to_config(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        metrics = train(config, run_dir)
    except UserError as e:
        log.error("%s", e)
        if e.exit_code == EXIT_USER_ERROR:  # bad input: no run to keep (a divergence keeps its)
            discard_unstarted_run(run_dir)
        sys.exit(e.exit_code)
    except TrainingInterrupted as e:
        log.warning(
            "%s; checkpoint %s; resume with: python -m nlp_adagrad.train %s trainer.resume=%s",
            e,
            e.checkpoint,
            overrides,
            run_dir,
        )
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside the steps, where the loop's handler does not run
        log.warning(
            "interrupted while preparing or finishing the run; checkpoints written so far, "
            "if any, are in %s",
            run_dir / "checkpoints",
        )
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if (line := os_error_line(e)) is None:
            raise
        log.error("%s", line)
        sys.exit(EXIT_USER_ERROR)
    log.info("run dir: %s  (%s --logdir %s)", run_dir, tensorboard_command(), run_dir / "tb")
    return metrics


def cli() -> None:
    """Run `main`; a config Hydra refuses (unknown key, bad value) exits 2 like other bad input.

    Under torchrun only rank 0 writes: the other ranks get a throwaway run dir and no logs.
    """
    if int(os.environ.get("RANK", "0")) > 0:
        scratch = tempfile.mkdtemp(prefix="nlp_adagrad-rank")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [
            f"hydra.run.dir={scratch}",
            f"hydra.sweep.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    if any(a in ("--help", "-h") for a in sys.argv[1:]):  # ours: keys with their docs
        print(help_text())
        raise SystemExit(0)
    unknown = check_override_keys([a for a in sys.argv[1:] if not a.startswith("-")])
    if unknown is not None:
        print(f"error: {unknown}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    refused = refuse_run_dir_arguments(sys.argv[1:])
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            raise SystemExit(EXIT_USER_ERROR) from None
        raise


def console() -> None:
    """`cli` as a command: the process ends right after its atexit handlers and flushed logs,
    without the interpreter tearing torch, datasets and pandas down module by module (0.5 s
    of a 3.8 s default run, measured). An exception other than SystemExit exits as usual."""
    try:
        cli()
        code = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):  # as sys.exit("message") does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    console()
