"""The C++ kernels (nlp_adagrad/csrc/): the gradients of a skip-gram step (`sgns.cpp`) and
of a bag classifier's (`bag.cpp`), Adagrad's fused row step (`adagrad.cpp`), a chunk of a
classifier's Adagrad steps in one call (`classify_steps.cpp`) and word-level
tokenizing of plain text (`words.cpp`): one module
built once per machine with `torch.utils.cpp_extension` (gcc, -O3 -march=native, OpenMP
through torch's own runtime; ~60 s, into torch's extensions cache, which `scripts/setup.sh`
fills), loaded in well under a second after that.

`task.kernel=auto` uses the task's kernel (skip-gram, classify) when it builds and falls back
to torch ops (slower: README, Word vectors and Performance) with one warning when it does not;
`cpp` insists; `torch` never builds it. Adagrad's `optim.fused` and `tokenizer.kernel` work
the same way.
`python -m nlp_adagrad.kernels` builds the module and says where.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from nlp_adagrad.errors import UserError, one_line

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [
    CSRC / name
    for name in (
        "module.cpp",
        "sgns.cpp",
        "bag.cpp",
        "adagrad.cpp",
        "classify_steps.cpp",
        "words.cpp",
    )
]
# compiled through the sources that include them
HEADERS = [CSRC / name for name in ("rows.h", "bag.h", "adagrad.h")]


# built where it runs (this CPU's vectors), at most 256 bits wide: on an AMD EPYC (Zen 5)
# gcc's 512-bit loops made the 15,000-step synthetic loop 7% slower. No errno from sqrt:
# with it gcc kept the Adagrad step's square roots one float at a time (the step 2.4x slower
# at dim 16, 6.5x at dim 100; skip-gram and GloVe runs 25% slower). The same bits either way
# (nothing is reassociated; README, Performance). No contraction into fused multiply-adds
# but the ones written out (adagrad.cpp's parity with torch's step); OpenMP binds to torch's
# libgomp
CFLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=256",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-fopenmp",
]
LDFLAGS = ["-fopenmp"]


def build_name() -> str:
    """The module's name: the digest of the sources, the flags, torch's and Python's versions
    in it. Two checkouts with the same sources share one build; torch's own cache is keyed by
    name and rebuilds whenever the source paths change (its build.ninja names them), which
    made a fresh clone and a working copy rebuild (~35 s) on every alternate run."""
    import torch

    digest = hashlib.sha256()
    for source in [*SOURCES, *HEADERS]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(" ".join([*CFLAGS, *LDFLAGS, torch.__version__, sys.version]).encode())
    return f"nlp_adagrad_kernels_{digest.hexdigest()[:16]}"


def cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache: where this machine's builds are kept (these kernels
    in torch's extensions root, nlp_adagrad.rate_stats beside it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def build_dir(name: str) -> Path:
    """Where the module is built: $TORCH_EXTENSIONS_DIR, else torch's default root
    (~/.cache/torch_extensions, under $XDG_CACHE_HOME when set), then the name."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cache_home() / "torch_extensions"
    return Path(root) / name


def _import_built(name: str) -> ModuleType | None:
    """The module as built before, imported straight from its file: torch's `load` would
    import setuptools and run ninja to find it up to date (~85 ms of every run's start-up).
    The name pins the sources, flags and versions, so a file there is this build; one cut
    short by an interrupted build fails to import and is rebuilt."""
    path = build_dir(name) / f"{name}.so"
    if not path.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module


@cache
def _build() -> ModuleType | str:
    """The compiled module, or why it could not be built."""
    name = build_name()
    built = _import_built(name)
    if built is not None:
        return built
    # the ninja that requirements.lock installs sits beside this Python, on PATH or not
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    try:
        from torch.utils.cpp_extension import load

        # the sources are copied beside the build, so its paths are the same from any checkout
        source_dir = build_dir(name) / "src"
        source_dir.mkdir(parents=True, exist_ok=True)
        for source in [*SOURCES, *HEADERS]:
            copy = source_dir / source.name
            if not copy.is_file() or copy.read_bytes() != source.read_bytes():
                shutil.copyfile(source, copy)
        return load(
            name=name,
            sources=[str(source_dir / source.name) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(build_dir(name)),
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a read-only cache: all mean "use torch"
        return one_line(e)


# each setting's value that insists on the kernels and its value that never uses them; the
# third value of every setting is auto (the kernels where they build)
CHOICES = {
    "task.kernel": ("cpp", "torch"),
    "optim.fused": ("true", "false"),
    "tokenizer.kernel": ("cpp", "tokenizers"),
}


def native_kernels(choice: str, setting: str) -> ModuleType | None:
    """The compiled module for `setting`'s value `choice` (its own words: `CHOICES`), or
    None: the setting's fallback (torch ops, tokenizers) runs instead."""
    insist, avoid = CHOICES[setting]
    if choice == avoid:
        return None
    built = _build()
    if not isinstance(built, str):
        return built
    if choice == insist:
        raise UserError(
            f"{setting}={insist} but the C++ kernels do not build ({built}); install gcc "
            f"and ninja, or use {setting}={avoid}"
        )
    _warn_fallback(built, setting, avoid)
    return None


@cache
def _warn_fallback(reason: str, setting: str, fallback: str) -> None:
    """Once per setting: each run asks for the kernels several times (5 identical lines)."""
    log.warning("the C++ kernels do not build (%s); %s falls back to %s", reason, setting, fallback)


def report_build(what: str, built: object, where: str) -> int:
    """`python -m` of a build's module: where it is, or why `what` does not build; the exit
    code."""
    if isinstance(built, str):
        print(f"the {what} do not build: {built}", file=sys.stderr)
        return 1
    print(f"built {where}")
    return 0


if __name__ == "__main__":
    built = _build()
    sys.exit(report_build("C++ kernels", built, getattr(built, "__file__", "")))
