"""Typed configuration: the dataclass schemas behind `conf/`, registered in Hydra's ConfigStore.

Every YAML file in `conf/<group>/` extends one schema here, so Hydra refuses unknown keys and
values of the wrong type at composition time; each dataclass checks its own values in
`__post_init__`. `to_config` converts the composed DictConfig once into plain dataclasses; code
below the entry point sees only these. Also here: the command line's keys checked against the
schemas before Hydra runs, and `--help` built from the fields and their comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from nlp_adagrad.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
FLOAT32_MAX = 3.4028234663852886e38


def _require(ok: bool, message: str) -> None:
    """Schema checks live in each dataclass's __post_init__: a bad value is refused wherever
    the config is built (composition, a checkpoint's config, a test's), in one line."""
    if not ok:
        raise UserError(message)


# ---------------------------------------------------------------------------------------- task
@dataclass
class TaskConfig:
    name: str = MISSING


KERNEL_CHOICES = ("auto", "cpp", "torch")


def _check_kernel(kernel: str) -> None:
    _require(kernel in KERNEL_CHOICES, "task.kernel must be auto, cpp or torch")


@dataclass
class ClassifyTaskConfig(TaskConfig):
    name: str = "classify"  # labelled documents -> a bag-of-tokens classifier
    # the step's loss and gradients on the CPU: cpp (built once per machine), torch (forward +
    # backward), or auto (cpp if it builds); CUDA and torchrun runs always use torch
    kernel: str = "auto"

    def __post_init__(self) -> None:
        _check_kernel(self.kernel)


@dataclass
class SkipGramTaskConfig(TaskConfig):
    name: str = "skipgram"  # word2vec's skip-gram with negative sampling; labels ignored
    window: int = 5  # context words each side, at most (the actual span is drawn from 1..window)
    negative: int = 5  # noise words per (centre, context) pair, drawn from counts^0.75
    sample: float = 1e-3  # frequent-word subsampling threshold (word2vec -sample); 0: off
    # the step's gradients: cpp (built once per machine), torch, or auto (cpp if it builds)
    kernel: str = "auto"

    def __post_init__(self) -> None:
        _check_kernel(self.kernel)
        _require(self.window >= 1, "task.window must be >= 1")
        _require(self.negative >= 1, "task.negative must be >= 1")
        _require(self.sample >= 0, "task.sample must be >= 0 (0 turns subsampling off)")


@dataclass
class GloVeTaskConfig(TaskConfig):
    name: str = "glove"  # GloVe: weighted least squares on log co-occurrence counts
    window: int = 15  # context words each side, each counted 1/distance (glove.c demo: 15)
    x_max: float = 10.0  # weighting f(x) = min(1, (x / x_max)^alpha); glove.c demo.sh: 10
    alpha: float = 0.75  # exponent of the weighting function

    def __post_init__(self) -> None:
        _require(self.window >= 1, "task.window must be >= 1")
        _require(self.x_max > 0, "task.x_max must be > 0")
        _require(self.alpha > 0, "task.alpha must be > 0")


PROBLEMS = ("canyon", "saddle", "nonstationary", "sparse_features", "text_replay")


@dataclass
class AnalyticTaskConfig(TaskConfig):
    """The experiments' small objectives (nlp_adagrad.objectives), each run in float64 by the
    optimizer family, on a learning-rate grid when one is given (the best rate is kept)."""

    name: str = "analytic"
    problem: str = "canyon"  # canyon | saddle | nonstationary | sparse_features | text_replay
    condition: float = 100.0  # canyon: curvature ratio of the two axes (1 on x, this on y)
    angle: float = 0.0  # canyon: the quadratic rotated by this many degrees
    scale: float = 1.0  # reparameterisation theta = scale * z: the optimizer steps z
    # 2-D problems: theta's start (no coordinate a round number: Adagrad's first step moves
    # each coordinate by exactly lr, and a grid rate equal to it would land on 0 by chance)
    start: list[float] = field(default_factory=lambda: [0.9, 0.6])
    steps: int = 2000  # optimizer steps per run
    tol: float = 1e-6  # canyon: a run converges at the first step with f(theta) < tol
    # learning rates tried, each a full run, the best one's reported (canyon: fewest steps to
    # tol; saddle: fewest to escape; nonstationary: lowest excess loss before the shift;
    # sparse_features: lowest validation loss). Empty: optim.lr alone
    lr_grid: list[float] = field(default_factory=list)
    history: int = 0  # saddle: steps on an earlier objective first (gradient mass in G)
    noise: float = 0.0  # std of Gaussian noise added to each gradient coordinate (seeded)
    dim: int = 20  # nonstationary: features; sparse_features: vocabulary of binary features
    examples: int = 4000  # sparse_features: training examples (validation and test alike)
    weighting: str = "binary"  # text_replay: a token's weight in its document, binary or mean

    def __post_init__(self) -> None:
        _require(self.problem in PROBLEMS, f"task.problem must be one of {', '.join(PROBLEMS)}")
        _require(self.condition >= 1, "task.condition must be >= 1")
        _require(self.scale != 0, "task.scale must not be 0")
        _require(len(self.start) == 2, "task.start must be two numbers [x, y]")
        _require(self.steps >= 1, "task.steps must be >= 1")
        _require(self.tol > 0, "task.tol must be > 0")
        _require(all(lr > 0 for lr in self.lr_grid), "task.lr_grid must hold rates > 0")
        _require(self.history >= 0 and self.noise >= 0, "task.history and task.noise must be >= 0")
        _require(self.dim >= 2 and self.examples >= 10, "task.dim >= 2 and task.examples >= 10")
        _require(self.weighting in ("binary", "mean"), "task.weighting must be binary or mean")


# ---------------------------------------------------------------------------------------- data
class DataFormat(enum.Enum):
    auto = "auto"  # from the file name: .csv .tsv .json .jsonl .parquet .txt (+ .gz .bz2 .xz .zst)
    csv = "csv"
    json = "json"
    parquet = "parquet"
    text = "text"  # fastText format: "__label__sport some words", one example per line


@dataclass
class DataConfig:
    name: str = MISSING
    test_fraction: float = 0.2  # held-out share when the corpus has no test split of its own
    max_examples: int | None = None  # cap on training examples (a quick look at a big corpus)
    seed: int = 0  # fixes the split and generated corpora; independent of trainer.seed

    def __post_init__(self) -> None:
        _require(0.0 < self.test_fraction < 1.0, "data.test_fraction must lie in (0, 1)")
        _require(0 <= self.seed < 2**63, f"data.seed must lie in [0, 2^63), got {self.seed}")
        _require(
            self.max_examples is None or self.max_examples > 0, "data.max_examples must be > 0"
        )


@dataclass
class BBCNewsConfig(DataConfig):
    name: str = "bbc_news"


@dataclass
class LocalDataConfig(DataConfig):
    name: str = "local"
    path: str = MISSING  # a file, or a folder of files of one format
    test_path: str | None = None  # a separate test file; otherwise split off test_fraction
    format: DataFormat = DataFormat.auto  # auto: from the file name (.csv .tsv .json .txt ...)
    delimiter: str | None = None  # csv only; None: tab for .tsv / .tab files, else a comma
    encoding: str = "utf-8"  # of csv, json and text files
    text_column: str = "text"  # the column holding the document text (csv, json, parquet)
    label_column: str = "label"  # the column holding the class (csv, json, parquet)
    label_prefix: str = "__label__"  # format=text only, as in fastText


@dataclass
class HubDataConfig(DataConfig):
    name: str = MISSING
    hub_path: str = MISSING  # a Hub dataset id, or a local folder laid out like one
    hub_name: str | None = None  # the dataset's configuration name, if it has several
    text_column: str = "text"  # the column holding the document text
    label_column: str = "label"  # the column holding the class
    train_split: str = "train"  # the dataset's split to train on
    test_split: str = "test"  # the dataset's split to evaluate on


@dataclass
class SyntheticDataConfig(DataConfig):
    name: str = "synthetic"
    vocab_size: int = 20_000  # word types, ranked by frequency
    num_docs: int = 10_000  # documents, before the train/test split
    doc_length: int = 100  # mean tokens per document
    num_classes: int = 4  # classes of the planted label model
    zipf_s: float = 1.1  # token frequency ~ rank^-s
    signal_fraction: float = 0.2  # share of token types, at every frequency, tied to one class
    label_noise: float = 0.02  # share of labels replaced by a uniform draw

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.vocab_size >= 2, "data.vocab_size must be >= 2")
        _require(self.num_docs >= 2, "data.num_docs must be >= 2")
        _require(self.doc_length >= 1, "data.doc_length must be >= 1")
        _require(self.num_classes >= 2, "data.num_classes must be >= 2")
        _require(self.zipf_s > 0, "data.zipf_s must be > 0")
        _require(0 < self.signal_fraction <= 1, "data.signal_fraction must lie in (0, 1]")
        _require(0 <= self.label_noise < 1, "data.label_noise must lie in [0, 1)")


@dataclass
class PlantedGroupsConfig(DataConfig):
    """Sentences built around planted groups of words that share contexts, at set frequencies:
    ground truth for word vectors (a word's nearest neighbours should be its group)."""

    name: str = "planted"
    # occurrences of every word of a group; one frequency level per entry
    group_counts: list[int] = field(default_factory=lambda: [5, 20, 100, 500])
    groups_per_level: int = 10  # groups at each frequency level
    group_size: int = 5  # words per group
    topic_words: int = 20  # context words private to each group
    topic_share: float = 0.5  # share of a sentence's other words drawn from its group's topic
    sentence_length: int = 11  # words per sentence, the group word in the middle
    vocab_size: int = 2_000  # background words filling the remaining slots (Zipf)
    zipf_s: float = 1.0  # background word frequency ~ rank^-s

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.group_counts) >= 1 and min(self.group_counts) >= 1,
            "data.group_counts must list counts >= 1",
        )
        _require(self.groups_per_level >= 1, "data.groups_per_level must be >= 1")
        _require(self.group_size >= 2, "data.group_size must be >= 2 (a group has neighbours)")
        _require(self.topic_words >= 1, "data.topic_words must be >= 1")
        _require(0 <= self.topic_share <= 1, "data.topic_share must lie in [0, 1]")
        _require(self.sentence_length >= 3, "data.sentence_length must be >= 3")
        _require(self.vocab_size >= 1, "data.vocab_size must be >= 1")
        _require(self.zipf_s > 0, "data.zipf_s must be > 0")


# ----------------------------------------------------------------------------------- tokenizer
@dataclass
class TokenizerConfig:
    min_count: int = 1  # drop words seen fewer times in the training split (fastText -minCount)
    max_vocab: int = 1_000_000  # keep at most this many most frequent words
    lowercase: bool = True  # fold case before counting and encoding
    ngrams: int = 1  # 1: unigrams; 2: also hashed bigrams (fastText -wordNgrams 2)
    buckets: int = 2_000_000  # rows for hashed bigrams (fastText -bucket)
    cache: bool = True  # reuse the tokenizer and token ids of an identical corpus (token_cache.py)
    # plain texts (ASCII and everyday symbols) counted and encoded by C++ (cpp), by tokenizers
    # alone (tokenizers), or auto (cpp where it builds): the same tokenizer and ids either way,
    # the C++ ~10x faster
    kernel: str = "auto"

    def __post_init__(self) -> None:
        _require(
            self.kernel in ("auto", "cpp", "tokenizers"),
            "tokenizer.kernel must be auto, cpp or tokenizers",
        )
        _require(self.min_count >= 1, "tokenizer.min_count must be >= 1")
        _require(
            self.max_vocab >= 2, "tokenizer.max_vocab must be >= 2 (one row is the unknown token)"
        )
        _require(self.ngrams in (1, 2), "tokenizer.ngrams must be 1 (unigrams) or 2 (adds bigrams)")
        _require(
            self.ngrams == 1 or self.buckets >= 1, "tokenizer.buckets must be >= 1 when ngrams=2"
        )


# --------------------------------------------------------------------------------------- model
class BagMode(enum.Enum):
    mean = "mean"  # bag features are token frequencies (fastText's averaging)
    sum = "sum"  # bag features are token counts


@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class BagModelConfig(ModelConfig):
    mode: BagMode = BagMode.mean  # bag features: token frequencies (mean) or counts (sum)


@dataclass
class LogRegConfig(BagModelConfig):
    name: str = "logreg"


@dataclass
class WordVectorsConfig(ModelConfig):
    name: str = MISSING  # skipgram or glove: the task's two tables of word vectors
    dim: int = 100  # width of the word vectors (word2vec -size, glove -vector-size)

    def __post_init__(self) -> None:
        _require(self.dim >= 1, "model.dim must be >= 1")


@dataclass
class FastTextConfig(BagModelConfig):
    name: str = "fasttext"
    dim: int = 64  # width of the token vectors (fastText -dim)

    def __post_init__(self) -> None:
        _require(self.dim >= 1, "model.dim must be >= 1")


# --------------------------------------------------------------------------------------- optim
@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0  # sparse rows: applied lazily, to touched rows only
    maximize: bool = False  # ascend the loss instead (as torch's optimizers allow)

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        # the weights are float32: a larger rate overflows the update itself
        _require(self.lr <= FLOAT32_MAX, f"optim.lr={self.lr:g} is beyond float32's range (3.4e38)")
        _require(
            0 <= self.weight_decay <= FLOAT32_MAX, "optim.weight_decay must lie in [0, 3.4e38]"
        )
        _require(getattr(self, "eps", 0) >= 0, "optim.eps must be >= 0")


@dataclass
class AdagradConfig(OptimConfig):
    name: str = "adagrad"
    # Scale-free steps: a token's first update moves each weight by about lr, whatever its
    # gradient's size. 5 gave the best mean test accuracy over 4 BBC News splits (0.98).
    lr: float = 5.0
    lr_decay: float = 0.0  # clr = lr / (1 + (step - 1) * lr_decay)
    initial_accumulator_value: float = 0.0  # G starts here: > 0 damps every row's first steps
    eps: float = 1e-10  # added outside the square root, as torch.optim.Adagrad does
    # sparse steps in one C++ pass (nlp_adagrad/csrc/adagrad.cpp), the torch-ops step's numbers
    # to ~1e-7: null uses it when it builds (CPU float32 tables), true insists, false never does
    fused: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.lr_decay >= 0, "optim.lr_decay must be >= 0")
        _require(
            self.initial_accumulator_value >= 0, "optim.initial_accumulator_value must be >= 0"
        )


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    # One rate for tiny token gradients (~1/doc length with model.mode=mean) and O(1) bias
    # gradients: there is no good value; model.mode=sum optim.lr=0.01 does far better.
    lr: float = 1.0
    linear_decay: bool = False  # fastText's schedule: lr falls linearly to 0 over the run


@dataclass
class RowwiseAdagradConfig(OptimConfig):
    name: str = "rowwise_adagrad"
    lr: float = 5.0  # best of 2 / 5 / 10 on the default BBC News run
    lr_decay: float = 0.0  # clr = lr / (1 + (step - 1) * lr_decay)
    initial_accumulator_value: float = 0.0  # G_row starts here
    eps: float = 1e-10  # added outside the square root

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.lr_decay >= 0, "optim.lr_decay must be >= 0")
        _require(
            self.initial_accumulator_value >= 0, "optim.initial_accumulator_value must be >= 0"
        )


@dataclass
class RMSpropConfig(OptimConfig):
    name: str = "rmsprop"
    lr: float = 0.2  # best of 0.01 / 0.05 / 0.2 on the default BBC News run
    alpha: float = 0.99  # v = alpha v + (1 - alpha) g^2: remembers ~1/(1 - alpha) updates
    eps: float = 1e-8  # added outside the square root

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.alpha < 1, "optim.alpha must lie in [0, 1)")


@dataclass
class SparseAdamConfig(OptimConfig):
    name: str = "sparse_adam"
    lr: float = 2.0  # best of 0.1 / 0.5 / 2 on the default BBC News run (steps ~lr, like Adagrad)
    beta1: float = 0.9  # decay of the first moment (the gradient's running mean)
    beta2: float = 0.999  # decay of the second moment
    eps: float = 1e-8  # added outside the square root, as torch.optim.SparseAdam does

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and beta2 must lie in [0, 1)"
        )


@dataclass
class FullMatrixAdagradConfig(OptimConfig):
    name: str = "full_matrix_adagrad"
    lr: float = 0.1  # steps move ~lr, as Adagrad's; small dense parameters only
    eps: float = 1e-10  # added to G^(1/2)'s eigenvalues (outside the root, as Adagrad's eps)


# ------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    epochs: int = 5  # passes over the training split
    max_steps: int | None = None  # stop after this many optimizer steps, mid-epoch if need be
    batch_size: int = 32  # documents per optimizer step
    seed: int = 0  # model init and data order
    device: str = "auto"  # cpu, cuda, cuda:N or auto (cuda when available)
    # torch intra-op threads; null keeps torch's default (one per core). 1: batches of 32 are
    # too small to split, and spinning threads slow a loaded machine 1.6-20x (README, Threads)
    num_threads: int | None = 1
    eval_every: int = 0  # steps between test evaluations; 0: at the end only
    log_every: int = 10  # steps between train/loss and tokens/sec points
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end only
    keep_checkpoints: int = 3  # newest step_*.pt files kept (last.pt links the newest)
    resume: str | None = None  # a run dir or checkpoint to continue from
    progress: bool = True  # tqdm bar on stderr

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**63, f"trainer.seed must lie in [0, 2^63), got {self.seed}")
        _require(self.epochs >= 1, "trainer.epochs must be >= 1")
        _require(self.max_steps is None or self.max_steps >= 1, "trainer.max_steps must be >= 1")
        _require(self.batch_size >= 1, "trainer.batch_size must be >= 1")
        _require(
            self.num_threads is None or self.num_threads >= 1, "trainer.num_threads must be >= 1"
        )
        _require(self.keep_checkpoints >= 1, "trainer.keep_checkpoints must be >= 1")
        for key in ("eval_every", "log_every", "checkpoint_every"):
            _require(getattr(self, key) >= 0, f"trainer.{key} must be >= 0")
        _require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            f"trainer.device must be cpu, cuda, cuda:N or auto, got {self.device!r}",
        )


# ----------------------------------------------------------------------------------- telemetry
@dataclass
class TelemetryConfig:
    # Steps between effective-learning-rate snapshots, after log-spaced ones at steps 1, 2,
    # 3, 5, 10, 20, ... below it; 0 turns them off. A snapshot's read costs the loop ~0.1 ms
    # (5,000 sampled rows, whatever the vocabulary, read inside the fused classifier steps;
    # ~0.2 ms read between steps), the rest runs in the telemetry process (in the loop,
    # ~0.08 ms more, ~0.3 ms with histograms, when training takes every core, its summaries
    # shared by the training threads): ~2% of the 1-thread loop in all, ~3% of a fast
    # 2-thread one on 2 cores (README, Performance).
    every: int = 50
    # Tokens a snapshot reads at most: larger vocabularies are sampled by count bucket
    # (seeded, weighted), so a snapshot's cost stays flat; final metrics read every token.
    sample_size: int = 5_000
    # Histograms at steps 1, 10, 100 below `every`, then on every 5th snapshot, and the last
    histogram_every: int = 5
    tokens: list[str] = field(default_factory=list)  # extra tokens to follow by name
    follow_per_bucket: int = 6  # tokens sampled (seeded) from each count bucket to follow
    rare_max_count: int = 5  # rare: count <= this
    common_top_k: int = 100  # common: the k most frequent tokens
    figure: bool = True  # eff_lr vs updates and vs count at the end (also eff_lr_vs_count.png)
    # Most frequent tokens whose rows go to TensorBoard's Projector, with token, count,
    # bucket and eff_lr as metadata (0: none)
    projector_tokens: int = 5_000

    def __post_init__(self) -> None:
        _require(self.every >= 0, "telemetry.every must be >= 0 (0 turns telemetry off)")
        _require(self.histogram_every >= 1, "telemetry.histogram_every must be >= 1")
        _require(self.sample_size >= 1, "telemetry.sample_size must be >= 1")
        _require(self.rare_max_count >= 1, "telemetry.rare_max_count must be >= 1")
        _require(self.common_top_k >= 1, "telemetry.common_top_k must be >= 1")
        _require(self.follow_per_bucket >= 0, "telemetry.follow_per_bucket must be >= 0")
        _require(self.projector_tokens >= 0, "telemetry.projector_tokens must be >= 0 (0: none)")


@dataclass
class Config:
    task: Any = MISSING
    data: Any = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: Any = MISSING
    optim: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        task, model = getattr(self.task, "name", None), getattr(self.model, "name", None)
        if task is None or model is None or task not in TASK_MODELS:
            return
        _require(
            task == "classify" or self.tokenizer.ngrams == 1,
            f"task={task} learns one vector per word: tokenizer.ngrams must be 1",
        )
        _require(
            model in TASK_MODELS[task],
            f"task={task} trains model={'|'.join(TASK_MODELS[task])}, not model={model}; "
            f"drop the model= override (task={task} picks its model)",
        )


# which models each task can train (task=skipgram picks model=skipgram in conf/task/)
TASK_MODELS = {"classify": ("logreg", "fasttext"), "skipgram": ("skipgram",), "glove": ("glove",)}

SCHEMAS: dict[str, dict[str, type]] = {
    "task": {
        "classify": ClassifyTaskConfig,
        "skipgram": SkipGramTaskConfig,
        "glove": GloVeTaskConfig,
        "analytic": AnalyticTaskConfig,
    },
    "data": {
        "bbc_news": BBCNewsConfig,
        "local": LocalDataConfig,
        "hub": HubDataConfig,
        "synthetic": SyntheticDataConfig,
        "planted": PlantedGroupsConfig,
    },
    "tokenizer": {"default": TokenizerConfig},
    "model": {"logreg": LogRegConfig, "fasttext": FastTextConfig, "words": WordVectorsConfig},
    "optim": {
        "adagrad": AdagradConfig,
        "rowwise_adagrad": RowwiseAdagradConfig,
        "sgd": SGDConfig,
        "rmsprop": RMSpropConfig,
        "sparse_adam": SparseAdamConfig,
        "full_matrix_adagrad": FullMatrixAdagradConfig,
    },
    "trainer": {"default": TrainerConfig},
    "telemetry": {"default": TelemetryConfig},
}


def register_configs() -> None:
    """Register the schemas; the YAML files name them as `/schema/<group>/<name>@_here_`."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def to_config(cfg: DictConfig) -> Config:
    """Convert the composed config to dataclasses, refusing keys no schema has."""
    for group in SCHEMAS:  # `+optim.lrr=1` gets past Hydra into an untyped group node
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if node is not None else None
        if dataclasses.is_dataclass(schema):
            for key in node:
                if key not in {f.name for f in dataclasses.fields(schema)}:
                    raise UserError(unknown_key_message(group, str(node.get("name")), key, schema))
    return OmegaConf.to_object(cfg)  # each dataclass checks its fields (__post_init__)


def unknown_key_message(group: str, option: str, key: str, schema: type) -> str:
    """`optim.lrr is not a key of optim=adagrad; did you mean optim.lr? ...` (one line)."""
    names = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(key, names, n=1)
    guess = f"did you mean {group}.{close[0]}? " if close else ""
    return (
        f"{group}.{key} is not a key of {group}={option}; {guess}"
        f"its keys: {', '.join(names)} (python -m nlp_adagrad.train --help lists them all)"
    )


def schema_of_option(group: str, option: str) -> type | None:
    """The dataclass behind conf/<group>/<option>.yaml, read from its defaults line."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return None
    found = re.search(rf"/schema/{group}/(\w+)@(?:_here_|{group})\b", path.read_text())
    return SCHEMAS[group].get(found.group(1)) if found else None


def check_override_keys(overrides: list[str]) -> str | None:
    """The first command-line override naming a key no chosen option of its group has, as one
    line with the closest real key; None when all are known.

    Read from the overrides and conf/ without composing (milliseconds): Hydra's own message
    for `optim.lrr=1` is five lines ending in a hint, `+optim.lrr=1`, that used to run with
    the key silently ignored.
    """
    chosen = {group: [default_option(group)] for group in SCHEMAS}
    settings, explicit = [], set()
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in SCHEMAS:
            chosen[key] = value.split(",")  # a sweep may list several options
            explicit.add(key)
        elif key == "experiment":  # its `override /task: analytic` lines choose options too
            for name in value.split(","):
                for group, option in picked_options(CONF_DIR / "experiment" / f"{name}.yaml"):
                    if group in SCHEMAS and group not in explicit:
                        chosen[group] = [option]
        elif "." in key and key.split(".", 1)[0] in SCHEMAS:
            settings.append(key.split(".", 1))
    if not any(o.lstrip("+~").startswith("model=") for o in overrides):
        chosen["model"] = sorted({task_model(t) or chosen["model"][0] for t in chosen["task"]})
    for group, key in settings:
        for option in chosen[group]:
            schema = schema_of_option(group, option)
            if schema is not None and key not in {f.name for f in dataclasses.fields(schema)}:
                return unknown_key_message(group, option, key, schema)
    return None


def picked_options(path: Path) -> list[tuple[str, str]]:
    """The (group, option) pairs a config file picks with `override /<group>: <option>`."""
    text = path.read_text() if path.is_file() else ""
    return re.findall(r"^\s*- override /(\w+): (\w+)", text, re.M)


def task_model(task: str) -> str | None:
    """The model conf/task/<task>.yaml picks (`override /model: skipgram`), if it picks one."""
    picked = dict(picked_options(CONF_DIR / "task" / f"{task}.yaml"))
    return picked.get("model")


def default_option(group: str) -> str:
    """The option conf/config.yaml's defaults list picks for a group."""
    found = re.search(rf"^\s*- {group}: (\w+)", (CONF_DIR / "config.yaml").read_text(), re.M)
    return found.group(1) if found else "default"


SHARED_SCHEMA = {"data": "hub", "model": "words"}  # options without a schema of their own name


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a `Config` from `config_to_dict`'s output (a checkpoint's `config`)."""
    sections = {}
    for group, schemas in SCHEMAS.items():
        node = d.get(group) or {"name": default_option(group)}  # runs from before `task`
        name = node.get("name", "default")
        # Hub presets share one schema, and so do the word-vector models
        schema = schemas.get(name) or schemas[SHARED_SCHEMA[group]]
        sections[group] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    return Config(**sections)


def config_to_dict(c: Config) -> dict[str, Any]:
    """Plain nested dict of builtins (enums as their values): for checkpoints and hparams."""
    return OmegaConf.to_container(OmegaConf.structured(c), enum_to_str=True)


# ---------------------------------------------------------------------------------- --help
HELP_HEADER = """\
usage: python -m nlp_adagrad.train (or nlp-adagrad-train) [group=option ...] [key=value ...]
  Sparse text classifiers (task=classify) and word vectors (task=skipgram, task=glove)
  trained with Adagrad; per-token learning rates in TensorBoard.
  -m sweeps comma-separated values: -m optim=adagrad,sgd optim.lr=0.05,0.5 trainer.seed=0,1,2
  Runs land in outputs/<date>/<time>/: tensorboard --logdir outputs
  Hydra's own flags: --hydra-help; the composed config of a command: --cfg job
"""


def _comment_docs(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the one after it on its line, else the
    comment lines just above it (so the YAML-free docs live once, beside the defaults)."""
    docs, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        found = re.match(r"(\w+): [^#]*?(?:#\s*(.*))?$", stripped)
        if found:
            docs[found.group(1)] = found.group(2) or " ".join(above)
        above = []
    return docs


def field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_comment_docs(klass))
    return docs


def _type_text(f: dataclasses.Field) -> str:
    enum_type = next((e for e in (DataFormat, BagMode) if e.__name__ in str(f.type)), None)
    if enum_type is not None:
        return "|".join(m.value for m in enum_type)
    return str(f.type).replace(" | None", "?")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is MISSING:
        return "required"
    return value.value if isinstance(value, enum.Enum) else repr(value)


def _option_values(group: str, option: str) -> dict[str, object]:
    """Values conf/<group>/<option>.yaml sets on top of its schema (Hub presets' paths)."""
    values = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    return {k: v for k, v in values.items() if k != "defaults"}


def _group_rows(group: str, options: list[str]) -> list[tuple[str, list[str]]]:
    """(label, key lines) blocks for one group: keys every option shares (same default) under
    the group's name, the rest under the options that have them."""
    by_schema: dict[type, list[str]] = {}
    for option in options:
        if (schema := schema_of_option(group, option)) is not None:
            by_schema.setdefault(schema, []).append(option)
    rows: dict[type, dict[str, tuple[str, str, str]]] = {}
    for schema, names in by_schema.items():
        docs, values = field_docs(schema), [_option_values(group, n) for n in names]
        rows[schema] = {}
        for f in dataclasses.fields(schema):
            if f.name == "name":
                continue
            seen = {repr(v[f.name]) for v in values if f.name in v}
            if not seen:  # no option's file sets it: the schema's default
                default = _default_text(f)
            elif len(seen) == 1 and all(f.name in v for v in values):
                default = seen.pop()
            else:
                default = "per option"
            rows[schema][f.name] = (_type_text(f), default, docs.get(f.name, ""))
    shared = set.intersection(*(set(r.items()) for r in rows.values())) if len(rows) > 1 else set()
    shared_names = {name for name, _ in shared}
    blocks = []
    first = next(iter(rows.values()))
    if shared_names:
        blocks.append(
            (
                f"{group} (every option)",
                [_line(group, n, *first[n]) for n in first if n in shared_names],
            )
        )
    for schema, names in by_schema.items():
        own = [_line(group, n, *row) for n, row in rows[schema].items() if n not in shared_names]
        if own:
            blocks.append((f"{group}={'|'.join(names)}" if len(by_schema) > 1 else group, own))
    return blocks


def _line(group: str, name: str, type_text: str, default: str, doc: str) -> str:
    return f"    {group + '.' + name:<36} {type_text:<26} {default:<12} {doc}".rstrip()


def help_text() -> str:
    """--help: the groups and their options, then every key with its type, default and one
    line of description, read from the dataclasses above (not Hydra's schema/* listing)."""
    lines = [HELP_HEADER, "Groups (group=option):"]
    options = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in SCHEMAS}
    for group, names in options.items():
        default = default_option(group)
        listed = [f"{n} (default)" if n == default else n for n in names]
        lines.append(f"  {group:<10} {', '.join(listed)}")
    lines += ["", "Keys (key=value), with type, default and what they do:"]
    for group, names in options.items():
        for label, block in _group_rows(group, names):
            lines += [f"  {label}:", *block]
    return "\n".join(lines)
