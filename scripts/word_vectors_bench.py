"""Word vectors on BBC News, side by side in one run: our skip-gram (Adagrad, and SGD with
word2vec's linear decay) and GloVe against gensim's Word2Vec skip-gram at the same vocabulary,
dim, window, negatives, subsampling, epochs and threads. WordSim-353 and SimLex-999 rho,
analogy accuracy, their OOV rates, rho by the pair's word frequency, and training words/s,
each the mean ± sample sd [min, max] over seeds.

    python scripts/word_vectors_bench.py                          # all of it (~40 min, 2 cores)
    python scripts/word_vectors_bench.py --settings default --seeds 0 --threads 1 --quick
    python scripts/word_vectors_bench.py --data planted --threads 1   # rare vs common, exact truth

`--data planted` trains on the planted-groups corpus (data=planted, conf/experiment/
planted_rare_common.yaml's) and reports, per word frequency, the share of each planted word's
nearest group words that are its own group's, instead of the benchmarks it has no words for.

Same vocabulary: gensim trains on our tokenizer's output (the same words, unknown ones
dropped, min_count 1 over an already filtered corpus), so every system is scored on the same
pairs and questions. Words/s: corpus words (before subsampling) times epochs over the
training loop's seconds, for gensim `Word2Vec.train` alone (vocabulary built beforehand),
for us `train/tokens_per_sec`. GloVe runs at its own defaults (window 15, 25 epochs), once
per seed at 1 thread. Prints the table, the command and the machine; writes words_bench.md
and words_bench.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from scripts.bench import machine_line  # noqa: E402

SETTINGS = {  # word2vec's and gensim's defaults, and the tuned ones
    "default": {"window": 5, "negative": 5, "epochs": 5, "sample": 1e-3},
    "tuned": {"window": 10, "negative": 10, "epochs": 15, "sample": 1e-4},
}
DIM = 100
SHOWN = [  # (header, metric key, format)
    ("WS353 rho", "eval/ws353/rho", ".3f"),
    ("SimLex rho", "eval/simlex/rho", ".3f"),
    ("analogy acc", "eval/analogy/accuracy", ".3f"),
    ("words/s", "words_per_sec", ",.0f"),
]
BANDS = ["count_lt20", "count_20_49", "count_ge50"]


PLANTED_LEVELS = (5, 20, 100, 500)  # data=planted's default group_counts


def config(*overrides: str):
    from nlp_adagrad.config import CONF_DIR, register_configs, to_config

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_config(compose("config", overrides=["trainer.progress=false", *overrides]))


def ours(
    task: str, optim: str | None, setting: dict, threads: int, seed: int, quick: bool, data: list
):
    from nlp_adagrad.train import train

    overrides = [f"task={task}", *data, f"trainer.seed={seed}", f"trainer.num_threads={threads}"]
    overrides += ["telemetry.figure=false", "telemetry.projector_tokens=0", f"model.dim={DIM}"]
    if task == "skipgram":
        overrides += [
            f"optim={optim}",
            *(f"task.{k}={setting[k]}" for k in ("window", "negative", "sample")),
        ]
        overrides.append(f"trainer.epochs={1 if quick else setting['epochs']}")
    elif quick:
        overrides.append("trainer.epochs=2")
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train(config(*overrides), Path(run_dir))
    metrics["words_per_sec"] = metrics["train/tokens_per_sec"]
    return metrics, overrides


def gensim_run(sentences, words, setting: dict, threads: int, seed: int, quick: bool):
    """(vectors in our vocabulary's order, training words/s) of gensim's skip-gram."""
    import numpy as np
    from gensim.models import Word2Vec

    epochs = 1 if quick else setting["epochs"]
    model = Word2Vec(
        vector_size=DIM,
        window=setting["window"],
        negative=setting["negative"],
        sample=setting["sample"],
        min_count=1,
        sg=1,
        hs=0,
        workers=threads,
        seed=seed,
    )
    model.build_vocab(sentences)
    total = sum(len(s) for s in sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.perf_counter() - started
    # back into our vocabulary's order, so the evaluation is the same code on the same words
    vectors = np.zeros((len(words), DIM), dtype=np.float32)
    for i, word in enumerate(words[1:], start=1):
        vectors[i] = model.wv[word]
    return vectors, total * epochs / seconds


def summary(values: list[float], spec: str) -> str:
    if not values:
        return "n/a"
    mean = format(statistics.fmean(values), spec)
    if len(values) == 1:
        return mean
    sd = format(statistics.stdev(values), spec)
    return f"{mean} ± {sd} [{format(min(values), spec)}, {format(max(values), spec)}]"


def by_count_table(rows: dict, first: dict) -> list[str]:
    """OOV rates, then rho by the pair's rarer word's count for every system."""
    lines = [
        "",
        f"OOV (same for every system): WS353 {first['eval/ws353/oov']:.1%}, SimLex "
        f"{first['eval/simlex/oov']:.1%}, analogies {first['eval/analogy/oov']:.1%}",
        "",
        "Rho by the pair's rarer word's count (WS353 + SimLex pooled): mean ± sd over seeds, "
        "and the mean 95% bootstrap interval over the band's pairs:",
        "",
        "| settings | system | threads | "
        + " | ".join(f"{b} (n={int(first[f'eval/by_count/{b}/pairs'])})" for b in BANDS)
        + " |",
        "|" + " --- |" * (3 + len(BANDS)),
    ]
    for (name, label, threads), ms in rows.items():
        cells = []
        for b in BANDS:
            rhos = [m[f"eval/by_count/{b}/rho"] for m in ms]
            low = statistics.fmean(m[f"eval/by_count/{b}/ci_low"] for m in ms)
            high = statistics.fmean(m[f"eval/by_count/{b}/ci_high"] for m in ms)
            sd = statistics.stdev(rhos) if len(rhos) > 1 else 0.0
            cells.append(f"{statistics.fmean(rhos):.3f} ± {sd:.3f} [{low:.2f}, {high:.2f}]")
        lines.append(f"| {name} | {label} | {threads} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="default,tuned")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--quick", action="store_true", help="1 epoch each (a smoke test)")
    parser.add_argument("--data", choices=["bbc_news", "planted"], default="bbc_news")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from nlp_adagrad.words.corpus import word_corpus
    from nlp_adagrad.words.vectors import finish_vectors

    data = [f"data={args.data}"]
    shown = SHOWN
    if args.data == "planted":
        data.append("telemetry.rare_max_count=20")
        shown = [
            *(
                (f"P@k count {n}", f"eval/planted/precision/count_{n}", ".3f")
                for n in PLANTED_LEVELS
            ),
            SHOWN[-1],
        ]
    seeds = [int(s) for s in args.seeds.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    corpus = word_corpus(config("task=skipgram", *data))
    text = corpus.text
    sentences = [
        [corpus.tokens[i] for i in text.ids[a:b]]
        for a, b in zip(text.offsets[:-1], text.offsets[1:])
    ]
    rows: dict[tuple, list[dict]] = {}
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        for threads in threads_list:
            for seed in seeds:
                torch.set_num_threads(threads)
                vectors, words_per_sec = gensim_run(
                    sentences, corpus.tokens, setting, threads, seed, args.quick
                )
                metrics = finish_vectors(
                    config("task=skipgram", *data), None, corpus.tokens, vectors, corpus.counts
                )
                metrics["words_per_sec"] = words_per_sec
                rows.setdefault((name, "gensim skip-gram", threads), []).append(metrics)
                for optim, label in (
                    ("adagrad", "ours skip-gram, Adagrad"),
                    ("sgd", "ours skip-gram, SGD + linear decay"),
                ):
                    metrics, _ = ours("skipgram", optim, setting, threads, seed, args.quick, data)
                    rows.setdefault((name, label, threads), []).append(metrics)
                if name == "default" and threads == 1:
                    metrics, _ = ours("glove", None, setting, 1, seed, args.quick, data)
                    rows.setdefault((name, "ours GloVe (its defaults)", 1), []).append(metrics)
                print(f"done: {name} threads={threads} seed={seed}", file=sys.stderr, flush=True)

    gensim_speed = {
        (s, t): statistics.fmean(m["words_per_sec"] for m in ms)
        for (s, label, t), ms in rows.items()
        if label.startswith("gensim")
    }
    head = ["settings", "system", "threads", *(h for h, _, _ in shown), "x gensim words/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (name, label, threads), ms in rows.items():
        cells = [summary([m[k] for m in ms], spec) for _, k, spec in shown]
        ratio = statistics.fmean(m["words_per_sec"] for m in ms) / gensim_speed[(name, threads)]
        lines.append(f"| {name} | {label} | {threads} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    first = next(iter(rows.values()))[0]
    lines += ["", f"{len(corpus.tokens) - 1:,} words, {len(text.ids):,} corpus words"]
    if args.data == "bbc_news":
        lines += by_count_table(rows, first)
    command = "python scripts/word_vectors_bench.py " + shlex.join(sys.argv[1:])
    lines += ["", f"command: {command}", f"machine: {machine_line()}"]
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "words_bench.md").write_text(report + "\n")
    (args.out / "words_bench.json").write_text(
        json.dumps({" / ".join(map(str, k)): v for k, v in rows.items()}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
