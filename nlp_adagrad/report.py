"""`python -m nlp_adagrad.report RUN_DIR_OR_SWEEP... -o DIR`: one page from a set of run dirs.

Writes DIR/report.html (self-contained: figures inlined, opens from disk) and DIR/report.md
(figures beside it in DIR/figures/). Runs are grouped into sections by what they ran: each
analytic problem (conf/experiment/), then text runs (classify, skipgram, glove). A section
has the experiment's own description (its conf/experiment file's header), the commands that
made its runs, a table (seeds pooled: mean ± sd [min, max], nlp_adagrad.compare) and figures:
- canyon, saddle: trajectories on the objective's contours, f and the effective rates over
  steps;
- nonstationary: the excess loss and the effective rate over steps;
- sparse_features: validation loss, and the rare and common features' rates, over steps;
- text_replay: eff_lr against updates (binned means, the fitted slope);
- text runs: rare and common rates over the run (read back from TensorBoard's events) and
  each run's eff_lr-vs-count figure.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nlp_adagrad.compare import find_runs, group_runs, load_runs, runs_table
from nlp_adagrad.config import CONF_DIR
from nlp_adagrad.run_info import read_overrides

ANALYTIC_COLUMNS = {
    "canyon": [
        ("best lr", "train/lr", ".3g"),
        ("finished", "result/finished", ".0f"),
        ("steps to f < tol", "result/steps", ".0f"),
        ("final f", "result/final_loss", ".3g"),
    ],
    "nonstationary": [
        ("best lr", "train/lr", ".3g"),
        ("excess loss before the shift", "result/excess_before_shift", ".3g"),
        ("excess loss at the end", "result/excess_after_shift", ".3g"),
        ("eff_lr at the shift", "result/eff_lr_at_shift", ".3g"),
        ("eff_lr at the end", "result/eff_lr_at_end", ".3g"),
    ],
    "sparse_features": [
        ("best lr", "train/lr", ".3g"),
        ("test accuracy", "test/accuracy", ".4f"),
        ("rare-dominated", "test/accuracy_rare_dominated", ".4f"),
        ("common-dominated", "test/accuracy_common_dominated", ".4f"),
        ("true weights", "test/accuracy_true_weights", ".4f"),
        ("eff_lr rare", "eff_lr/rare", ".3g"),
        ("eff_lr common", "eff_lr/common", ".3g"),
    ],
    "text_replay": [
        ("slope vs updates", "eff_lr/slope_vs_updates", ".3f"),
        ("slope vs count", "eff_lr/slope_vs_count", ".3f"),
    ],
}
ANALYTIC_COLUMNS["saddle"] = [
    *ANALYTIC_COLUMNS["canyon"][:2],
    ("steps to escape", "result/steps", ".0f"),
    ANALYTIC_COLUMNS["canyon"][3],
]


# the seven claims' experiments (conf/experiment/), in the README's order; sections follow it
CLAIMS = (
    "canyon",
    "rotated_canyon",
    "reparameterization",
    "saddle",
    "nonstationary",
    "sparse_features",
    "text_slope",
)
PANEL_KEYS = ("task.condition", "task.angle", "task.scale", "task.history")
FIGURE_NAME = re.compile(r"\d\d_[a-z0-9_]+_\d+\.png")  # what write_report names its figures


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict
    overrides: list[str]

    @property
    def experiment(self) -> str | None:
        """The conf/experiment file the run was made with, if any."""
        for o in self.overrides:
            if o.lstrip("+").startswith("experiment="):
                return o.split("=", 1)[1]
        return None

    @property
    def section(self) -> str:
        """Its section's title: the experiment, else what it ran."""
        return self.experiment or self.problem

    @property
    def problem(self) -> str:
        if self.config.get("task.name") == "analytic":
            return str(self.config["task.problem"])
        return f"text ({self.config.get('task.name', 'classify')})"

    def trajectory(self) -> dict[str, np.ndarray]:
        """trajectory.csv's columns (analytic runs)."""
        with open(self.path / "trajectory.csv") as f:
            rows = list(csv.reader(f))
        values = np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))
        return {name: values[:, i] for i, name in enumerate(rows[0])}


@dataclass
class Section:
    title: str
    runs: list[Run]
    reproduce: list[str] = field(default_factory=list)  # the experiment file's commands
    text: list[str] = field(default_factory=list)
    table: str = ""
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG)


# ------------------------------------------------------------------------------------ reading
def read_runs(dirs: list[Path]) -> list[Run]:
    paths = find_runs(dirs)
    runs = []
    for path, (config, metrics) in zip(paths, load_runs(paths)):
        runs.append(Run(path, config, metrics, read_overrides(path)))
    return runs


TRAIN = "python -m nlp_adagrad.train"


def experiment_file(name: str) -> tuple[list[str], list[str]]:
    """(the commands, the description) in conf/experiment/<name>.yaml's header comment: its
    `python -m nlp_adagrad.train ...` lines, and the rest."""
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    commands, text = [], []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.startswith("#"):
            break
        line = line.lstrip("# ")
        if TRAIN in line:
            commands.append(line[line.index(TRAIN) :])
        elif not line.startswith("@package"):
            text.append(line)
    return commands, text


def experiment_header(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(the commands, the description) of the experiment files the runs were made with."""
    commands, text = [], []
    for name in sorted({r.experiment for r in runs if r.experiment}):
        more_commands, more_text = experiment_file(name)
        commands += more_commands
        text += more_text
    return commands, text


def commands(runs: list[Run]) -> list[str]:
    """The command line of each distinct run (a sweep's jobs each have theirs)."""
    seen = {TRAIN + " " + " ".join(o for o in r.overrides if "hydra." not in o) for r in runs}
    return sorted(seen)


def quiet_keys(runs: list[Run]) -> tuple[str, ...]:
    """Config keys left out of tables and labels: the rate grid, and each optimizer's own
    settings (its lr when a grid picks the rate, its eps, betas...), which differ between
    optimizers without telling runs apart; a key set on a command line is always shown."""
    typed = {o.lstrip("+~").split("=", 1)[0] for r in runs for o in r.overrides}
    keys = {k for r in runs for k in r.config if k.startswith("optim.") and k != "optim.name"}
    if not any(r.config.get("task.lr_grid") for r in runs):
        keys.discard("optim.lr")
    return tuple(sorted((keys | {"task.lr_grid"}) - typed))


def labels(runs: list[Run], skip: tuple[str, ...] = ()) -> list[str]:
    """Each run named by the config keys that differ between the runs (seed included)."""
    pooled = (*skip, *quiet_keys(runs))
    varying, groups = group_runs([(r.config, r.metrics) for r in runs], pooled=pooled)
    names = [""] * len(runs)
    for values, members in groups:
        name = ", ".join(
            str(v) if k == "optim.name" else f"{k.split('.')[-1]}={v}"
            for k, v in zip(varying, values)
        )
        for i in members:
            names[i] = name or runs[i].problem
    return names


# ------------------------------------------------------------------------------------ figures
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _subplots(n: int, width: float = 4.2, height: float = 3.6):
    """A figure of n panels, three to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.reshape(-1)[n:]:
        ax.set_visible(False)
    return fig, axes.reshape(-1)[:n]


def _panel_key(run: Run) -> tuple:
    c = run.config
    return (
        c.get("task.condition"),
        c.get("task.angle"),
        c.get("task.scale"),
        c.get("task.history"),
    )


def two_d_figures(section: Section) -> None:
    """Trajectories on contours (a panel per problem setting), then f and rates over steps."""
    from nlp_adagrad import objectives

    runs, names = section.runs, labels(section.runs, skip=PANEL_KEYS)
    full_names = labels(section.runs)
    # a panel per value of the problem's settings that vary here (condition, angle, ...)
    shown = [k for k in PANEL_KEYS if len({r.config.get(k) for r in runs}) > 1]
    panels: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        panels.setdefault(tuple(run.config.get(k) for k in shown), []).append(i)
    fig, axes = _subplots(len(panels))
    for ax, (key, members) in zip(axes, panels.items()):
        paths = [runs[i].trajectory() for i in members]
        start = np.array([[p["x"][0], p["y"][0]] for p in paths])
        span = 1.5 * max(float(np.abs(start).max()), 1e-3)  # diverged runs leave the frame
        grid = np.linspace(-span, span, 200)
        gx, gy = np.meshgrid(grid, grid)
        if runs[members[0]].problem == "saddle":
            f = 0.5 * gx**2 + 0.25 * gy**4 - 0.5 * gy**2
            ax.contour(gx, gy, f, levels=20, cmap="Greys", linewidths=0.6)
        else:
            c = runs[members[0]].config
            h = objectives.canyon_hessian(c["task.condition"], c["task.angle"]).numpy()
            f = 0.5 * (h[0, 0] * gx**2 + 2 * h[0, 1] * gx * gy + h[1, 1] * gy**2)
            ax.contour(gx, gy, np.log10(f + 1e-12), levels=20, cmap="Greys", linewidths=0.6)
        for i, path in zip(members, paths):
            ax.plot(path["x"], path["y"], ".-", ms=2, lw=0.8, label=names[i])
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        title = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in zip(shown, key))
        ax.set_title(title or runs[members[0]].problem, fontsize=9)
        ax.legend(fontsize=6)
    section.figures.append(("trajectories on the objective's contours (theta space)", _png(fig)))
    fig, (loss_ax, x_ax, y_ax) = _subplots(3)
    for run, name in zip(runs, full_names):
        t = run.trajectory()
        excess = t["loss"] - (-0.25 if run.problem == "saddle" else 0.0)
        excess[~(excess < 1e12)] = np.nan  # a diverging run leaves the chart, not its scale
        loss_ax.loglog(t["step"] + 1, np.maximum(excess, 1e-16), lw=0.9, label=name)
        x_ax.loglog(t["step"], t["eff_lr_x"], lw=0.9, label=name)
        y_ax.loglog(t["step"], t["eff_lr_y"], lw=0.9, label=name)
    loss_ax.set_title("f - min f over steps (step + 1)", fontsize=9)
    x_ax.set_title("effective rate of x over steps", fontsize=9)
    y_ax.set_title("effective rate of y over steps", fontsize=9)
    for ax in (loss_ax, x_ax, y_ax):
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    section.figures.append(("the objective and each coordinate's effective rate", _png(fig)))


def curve_figures(section: Section, panels: list[tuple[str, str, bool]]) -> None:
    """One panel per (trajectory column, title, log y); a line per run."""
    runs, names = section.runs, labels(section.runs, skip=("trainer.seed",))
    fig, axes = _subplots(len(panels))
    colours: dict[str, str] = {}
    for run, name in zip(runs, names):
        t = run.trajectory()
        first = name not in colours
        for ax, (column, _, log_y) in zip(axes, panels):
            line = ax.plot(t["step"], t[column], lw=0.9, color=colours.get(name))[0]
            colours.setdefault(name, line.get_color())
            if first:
                line.set_label(name)
            if log_y:
                ax.set_yscale("log")
    for ax, (_, title, _) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    section.figures.append(("a line per run (seeds share a colour)", _png(fig)))


def replay_figure(section: Section) -> None:
    """eff_lr against updates, binned means and fitted line, one line per setting (its first
    seed drawn, the slope's mean ± sd over seeds in the legend), each scaled to 1 at its
    first bin so the slopes compare."""
    from nlp_adagrad.fits import binned_fit

    fig, axes = _subplots(1, width=5.5, height=4.0)
    ax = axes[0]
    groups: dict[str, list[Run]] = {}
    for run, name in zip(section.runs, labels(section.runs, skip=("trainer.seed",))):
        groups.setdefault(name, []).append(run)
    for name, members in groups.items():
        fits = []
        for run in members:
            with open(run.path / "replay_stats.csv") as f:
                rows = np.array([r for r in csv.reader(f)][1:], dtype=np.float64)
            fits.append(binned_fit(rows[:, 2], rows[:, 4]))
        fit = fits[0]
        if fit is None:
            continue
        slopes = np.array([f.slope for f in fits if f is not None])
        spread = f" ± {slopes.std(ddof=1):.3f}" if len(slopes) > 1 else ""
        x, y = np.exp(fit.bin_x), np.exp(fit.bin_y - fit.bin_y[0])
        points = ax.plot(x, y, "o", ms=3)
        ends = x[[0, -1]]
        ax.plot(
            ends,
            np.exp(fit.intercept - fit.bin_y[0]) * ends**fit.slope,
            "-",
            color=points[0].get_color(),
            label=f"{name}: slope {slopes.mean():.3f}{spread} ({len(slopes)} seeds)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("eff_lr = 1 / sqrt(G), 1 at the first bin")
    ax.legend(fontsize=7)
    section.figures.append(("binned eff_lr against updates, replayed accumulators", _png(fig)))


def text_run_figures(section: Section) -> None:
    """Rare and common rates over the run from each run's TensorBoard events, then the
    eff_lr-vs-count figures the runs saved."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = _subplots(1, width=5.5, height=4.0)
    ax = axes[0]
    for run, name in zip(section.runs, labels(section.runs)):
        for events in sorted((run.path / "tb").glob("*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            tags = acc.Tags().get("scalars", [])
            colour = None
            for which in ("rare", "common"):
                tag = next((t for t in tags if re.fullmatch(rf"eff_lr/(\w+/)?{which}", t)), None)
                if tag is not None:
                    points = acc.Scalars(tag)
                    line = ax.loglog(
                        [p.step for p in points],
                        [p.value for p in points],
                        "-" if which == "rare" else "--",
                        color=colour,
                        label=f"{name}: {which}",
                    )[0]
                    colour = line.get_color()
    ax.set_xlabel("step")
    ax.set_ylabel("eff_lr")
    ax.legend(fontsize=6)
    section.figures.append(("rare (solid) and common (dashed) tokens' rates over steps", _png(fig)))
    for run, name in zip(section.runs, labels(section.runs)):
        for png in sorted(run.path.glob("eff_lr_vs_count*.png")):
            section.figures.append((f"{name}: {png.name}", png.read_bytes()))


def build_section(title: str, runs: list[Run]) -> Section:
    section = Section(title, runs, *experiment_header(runs))
    problem = runs[0].problem
    columns = ANALYTIC_COLUMNS.get(problem)
    pooled = ("trainer.seed", *quiet_keys(runs))
    section.table = runs_table([(r.config, r.metrics) for r in runs], pooled, columns)
    if problem in ("canyon", "saddle"):
        two_d_figures(section)
    elif problem == "nonstationary":
        curve_figures(
            section,
            [
                ("excess_loss", "excess loss over steps", True),
                ("eff_lr", "mean effective rate", True),
            ],
        )
    elif problem == "sparse_features":
        curve_figures(
            section,
            [
                ("val_loss", "validation log loss", False),
                ("eff_lr_rare", "median rate, rare features", True),
                ("eff_lr_common", "median rate, common features", True),
            ],
        )
    elif problem == "text_replay":
        replay_figure(section)
    else:
        text_run_figures(section)
    return section


# ------------------------------------------------------------------------------------ writing
def write_report(sections: list[Section], out: Path) -> tuple[Path, Path]:
    """report.html (figures inlined) and report.md (figures in out/figures/)."""
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for old in figures_dir.glob("*.png"):  # an earlier report's figures, by their names only
        if FIGURE_NAME.fullmatch(old.name):
            old.unlink()
    page = [
        "<!doctype html><meta charset='utf-8'><title>nlp_adagrad report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px}code{font-size:12px}img{max-width:100%}</style>",
        "<h1>nlp_adagrad report</h1>",
    ]
    markdown = ["# nlp_adagrad report", ""]
    for n, section in enumerate(sections, 1):
        page.append(f"<h2>{html.escape(section.title)}</h2>")
        markdown += [f"## {section.title}", ""]
        if section.reproduce:
            page.append(
                "<p>Reproduce:</p><pre>" + html.escape("\n".join(section.reproduce)) + "</pre>"
            )
            markdown += ["Reproduce:", "", "```", *section.reproduce, "```", ""]
        if section.text:
            page.append("<p>" + html.escape(" ".join(section.text)) + "</p>")
            markdown += [" ".join(section.text), ""]
        page.append("<p>Runs:</p><pre>" + html.escape("\n".join(commands(section.runs))) + "</pre>")
        markdown += ["Runs:", "", "```", *commands(section.runs), "```", ""]
        page.append(_table_html(section.table))
        markdown += [section.table, ""]
        for k, (caption, png) in enumerate(section.figures, 1):
            name = f"{n:02d}_{_slug(section.title)}_{k}.png"
            (figures_dir / name).write_bytes(png)
            data = base64.b64encode(png).decode()
            page.append(
                f"<figure><img src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
            markdown += [f"![{caption}](figures/{name})", ""]
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("\n".join(page))
    md_path.write_text("\n".join(markdown))
    return html_path, md_path


def _table_html(markdown_table: str) -> str:
    rows = [line.strip("|").split("|") for line in markdown_table.splitlines()]
    head, body = rows[0], rows[2:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += [
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body
    ]
    return "".join(out) + "</table>"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or sweep folders")
    parser.add_argument("-o", "--out", type=Path, default=Path("report"), help="output folder")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    runs = read_runs(args.dirs)
    if not runs:
        print(
            f"error: no run dirs (with metrics.json) under {', '.join(map(str, args.dirs))}; "
            f"run an experiment first (conf/experiment/)",
            file=sys.stderr,
        )
        return 2
    by_section: dict[str, list[Run]] = {}
    for run in runs:
        by_section.setdefault(run.section, []).append(run)
    order = {name: i for i, name in enumerate(CLAIMS)}
    titles = sorted(by_section, key=lambda t: (order.get(t, len(order)), t))
    sections = [build_section(title, by_section[title]) for title in titles]
    html_path, md_path = write_report(sections, args.out)
    print(f"{html_path}\n{md_path}  ({len(runs)} runs, {len(sections)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
