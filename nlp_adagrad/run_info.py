"""How a run presents itself: its name in TensorBoard and the hyperparameters HParams shows.

Both start from what the user set on the command line (Hydra's `.hydra/overrides.yaml` in the
run dir) plus the few keys that tell any two runs apart: data, model, optimizer, learning rate,
batch size, epochs and seed. So a sweep reads side by side, and an sgd run, a fastText run and
a CSV run are told apart by name, not by timestamp.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nlp_adagrad.config import SCHEMAS, Config, config_to_dict

# The keys shown for every run, whether or not the user set them
BASE_HPARAMS = (
    "data.name",
    "model.name",
    "model.dim",
    "optim.name",
    "optim.lr",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.seed",
)
# Metrics in HParams, in the order its table shows them (the first five are ticked)
HPARAM_METRICS = (
    "test/accuracy",
    "eval/ws353/rho",  # word-vector runs (no test/accuracy)
    "eval/simlex/rho",
    "eval/analogy/accuracy",
    "eff_lr/rare_to_common",
    "eff_lr/slope_vs_updates",
    "eff_lr/slope_vs_count",
    "train/loss",
    "test/loss",
    "eff_lr/rare",
    "eff_lr/common",
)
# Where files come from, not what the run is: kept out of run names (as out of sweep dirs)
NOT_IN_NAME = ("data.path", "data.test_path", "data.hub_path", "trainer.resume")
NOT_SHOWN = ("trainer.progress",)
MAX_NAME_LENGTH = 150


def read_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides Hydra recorded for this run ([] outside Hydra)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def overridden_keys(overrides: list[str]) -> list[str]:
    """Config keys the overrides set, in their order: `optim=sgd` sets optim.name."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in SCHEMAS:
            key = f"{key}.name"
        if key.split(".", 1)[0] in SCHEMAS and key not in NOT_SHOWN and key not in keys:
            keys.append(key)
    return keys


def flat_config(c: Config) -> dict[str, Any]:
    """The config as one level of dotted keys, values as builtins (lists as text)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                visit(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node if isinstance(node, (bool, int, float, str)) else str(node)

    visit("", config_to_dict(c))
    return flat


def hparams(c: Config, overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """(key -> value for HParams, the keys the user set): the set ones first."""
    flat = flat_config(c)
    chosen = overridden_keys(overrides)
    shown = [k for k in chosen + list(BASE_HPARAMS) if k in flat]
    return {k: flat[k] for k in dict.fromkeys(shown)}, set(chosen)


def _short(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def run_name(c: Config, overrides: list[str]) -> str:
    """e.g. `bbc_news,fasttext-d64,sgd,lr=0.5,trainer.epochs=3`: data (with the file's name
    for local data), model, optimizer, learning rate, the experiment if one was picked, then
    the other keys the user set."""
    flat = flat_config(c)
    data = flat["data.name"]
    if "data.path" in flat:
        data += f"-{Path(str(flat['data.path'])).name}"
    model = flat["model.name"] + (f"-d{flat['model.dim']}" if "model.dim" in flat else "")
    parts = [data, model, flat["optim.name"], f"lr={_short(flat['optim.lr'])}"]
    parts += [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("experiment=")]
    # the model names the task too: logreg / fasttext classify, skipgram and glove are tasks
    covered = {"data.name", "model.name", "model.dim", "optim.name", "optim.lr", "task.name"}
    covered |= set(NOT_IN_NAME)
    parts += [
        f"{k}={_short(flat[k])}"
        for k in overridden_keys(overrides)
        if k not in covered and k in flat
    ]
    if c.trainer.resume:
        parts.append("resumed")
    name = re.sub(r"[^\w.=,+-]", "_", ",".join(parts))
    return name[:MAX_NAME_LENGTH]
