"""The skip-gram step's C++ kernel (nlp_adagrad/csrc/sgns.cpp): built once per machine with
`torch.utils.cpp_extension` (gcc, -O3 -march=native; ~30 s, into torch's extensions cache,
which `scripts/setup.sh` fills), loaded in well under a second after that.

`task.kernel=auto` uses it when it builds and falls back to torch ops (slower: README, Word
vectors) with one warning when it does not; `cpp` insists; `torch` never builds it.
`python -m nlp_adagrad.words.kernel` builds it and says where.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from nlp_adagrad.errors import UserError, one_line

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "sgns.cpp"


@cache
def _build() -> ModuleType | str:
    """The compiled module, or why it could not be built."""
    # the ninja that requirements.lock installs sits beside this Python, on PATH or not
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="nlp_adagrad_sgns",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native"],  # built where it runs: this CPU's vectors
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a read-only cache: all mean "use torch"
        return one_line(e)


def sgns_kernel(choice: str) -> ModuleType | None:
    """The kernel for `task.kernel` (auto, cpp or torch); None means torch ops."""
    if choice == "torch":
        return None
    built = _build()
    if not isinstance(built, str):
        return built
    if choice == "cpp":
        raise UserError(
            f"task.kernel=cpp but the C++ kernel does not build ({built}); install gcc and "
            f"ninja, or use task.kernel=torch"
        )
    log.warning("the C++ skip-gram kernel does not build (%s); using torch ops", built)
    return None


if __name__ == "__main__":
    built = _build()
    if isinstance(built, str):
        print(f"the C++ skip-gram kernel does not build: {built}", file=sys.stderr)
        sys.exit(1)
    print(f"built {built.__file__}")
