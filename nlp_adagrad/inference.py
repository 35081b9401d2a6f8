"""A finished run, loaded for use: its tokenizer, model and class names, and top-k predictions.

`predict` and `evaluate` share this; training never imports it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from nlp_adagrad.checkpoint import LAST, load_checkpoint
from nlp_adagrad.config import Config, config_from_dict
from nlp_adagrad.errors import UserError
from nlp_adagrad.models import build_model
from nlp_adagrad.scoring import batched_logits
from nlp_adagrad.vocab import EncodedSplit, encode_split


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    tokenizer: Tokenizer
    model: nn.Module
    class_names: list[str]
    test_split: dict | None  # {"documents", "digest"} of the split it held out (newer runs)
    _rates: dict[int, float] | None = None

    def encode(self, texts: list[str], labels: list[int] | None = None) -> EncodedSplit:
        features = datasets.Features(
            {
                "text": datasets.Value("string"),
                "label": datasets.ClassLabel(names=self.class_names),
            }
        )
        ds = datasets.Dataset.from_dict(
            {"text": texts, "label": labels if labels is not None else [0] * len(texts)},
            features=features,
        )
        return encode_split(ds, self.tokenizer, self.config.tokenizer)

    def token_rates(self) -> dict[int, float]:
        """Token id -> effective learning rate at the end of training (token_stats.csv)."""
        if self._rates is None:
            self._rates = {}
            path = self.run_dir / "token_stats.csv"
            if path.is_file():
                with open(path, newline="", encoding="utf-8") as f:
                    for row in csv.DictReader(f):
                        if row["eff_lr"]:
                            self._rates[int(row["id"])] = float(row["eff_lr"])
        return self._rates

    def probabilities(self, split: EncodedSplit, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, one row per document."""
        self.model.eval()
        out = [
            torch.softmax(logits, dim=1)
            for _, logits in batched_logits(self.model, split, batch_size, torch.device("cpu"))
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.class_names)))


@dataclass
class Contribution:
    token: str
    count: int  # occurrences in the document
    logits: np.ndarray  # what the token adds to each class's logit
    eff_lr: float  # the token's effective rate at the end of training (NaN if none)


@torch.no_grad()
def explain(run: LoadedRun, split: EncodedSplit, doc: int) -> tuple[list[Contribution], np.ndarray]:
    """Each distinct token's share of a document's logits, and the logits without any token.

    Both models classify the pooled bag linearly (logreg: bag + bias; fastText: a Linear on
    the bag), so a token's share is classify(weight * row) - classify(0), weight being its
    count, or count / length with mode=mean; the shares and the empty bag sum to the logits.
    """
    ids = split.ids[split.offsets[doc] : split.offsets[doc + 1]]
    distinct, counts = np.unique(ids, return_counts=True)
    mean = run.config.model.mode.value == "mean"
    weights = counts / max(len(ids), 1) if mean else counts.astype(np.float64)
    table = run.model.embedding.weight
    rows = table[torch.from_numpy(distinct)] * torch.from_numpy(weights).to(table.dtype)[:, None]
    empty = run.model.classify(torch.zeros(1, table.shape[1], dtype=table.dtype))
    shares = (run.model.classify(rows) - empty).numpy()
    words = run.tokenizer.get_vocab_size()
    rates = run.token_rates()
    return [
        Contribution(
            run.tokenizer.id_to_token(int(i)) if i < words else f"[bigram bucket {i - words}]",
            int(n),
            shares[k],
            rates.get(int(i), float("nan")),
        )
        for k, (i, n) in enumerate(zip(distinct, counts))
    ], empty[0].numpy()


def load_run(run_dir_str: str) -> LoadedRun:
    """Load a run dir written by `nlp_adagrad.train`; UserError if it is not one."""
    run_dir = Path(run_dir_str).expanduser()
    checkpoint_path = run_dir / "checkpoints" / LAST
    tokenizer_path = run_dir / "tokenizer.json"
    if not checkpoint_path.is_file() or not tokenizer_path.is_file():
        raise UserError(
            f"{run_dir_str} is not a finished nlp_adagrad run dir (needs tokenizer.json and "
            f"checkpoints/{LAST}); give the run dir a training run printed at its end"
        )
    state = load_checkpoint(checkpoint_path)
    config = config_from_dict(state["config"])
    if config.task.name != "classify":
        raise UserError(
            f"{run_dir_str} is a task={config.task.name} run: it has word vectors, not "
            f"classes; use python -m nlp_adagrad.neighbors {run_dir_str} WORD"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    class_names = list(state["class_names"])
    table_rows = state["model"]["embedding.weight"].shape[0]
    model = build_model(config.model, table_rows, len(class_names))
    model.load_state_dict(state["model"])
    return LoadedRun(run_dir, config, tokenizer, model, class_names, state.get("test_split"))


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most probable classes per row, most probable first (stable on ties)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
