"""The C++ kernels (nlp_adagrad/csrc/): the skip-gram step's gradients (`sgns.cpp`) and
Adagrad's fused row step (`adagrad.cpp`), one module built once per machine with
`torch.utils.cpp_extension` (gcc, -O3 -march=native, OpenMP through torch's own runtime;
~30 s, into torch's extensions cache, which `scripts/setup.sh` fills), loaded in well under a
second after that.

`task.kernel=auto` uses the skip-gram kernel when it builds and falls back to torch ops
(slower: README, Word vectors) with one warning when it does not; `cpp` insists; `torch`
never builds it. Adagrad's `optim.fused` works the same way. `python -m nlp_adagrad.kernels`
builds the module and says where.
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

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("module.cpp", "sgns.cpp", "adagrad.cpp")]


@cache
def _build() -> ModuleType | str:
    """The compiled module, or why it could not be built."""
    # the ninja that requirements.lock installs sits beside this Python, on PATH or not
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="nlp_adagrad_kernels",
            sources=[str(source) for source in SOURCES],
            # built where it runs (this CPU's vectors); no contraction into fused multiply-adds
            # but the ones written out (adagrad.cpp's parity with torch's step); OpenMP binds
            # to the libgomp torch has loaded
            extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a read-only cache: all mean "use torch"
        return one_line(e)


def native_kernels(choice: str, setting: str) -> ModuleType | None:
    """The compiled module for a setting's choice (auto, cpp or torch); None means torch ops.

    `setting` names the config key in the messages (task.kernel, optim.fused).
    """
    insist, avoid = {"optim.fused": ("true", "false")}.get(setting, ("cpp", "torch"))
    if choice == "torch":
        return None
    built = _build()
    if not isinstance(built, str):
        return built
    if choice == "cpp":
        raise UserError(
            f"{setting}={insist} but the C++ kernels do not build ({built}); install gcc "
            f"and ninja, or use {setting}={avoid}"
        )
    log.warning("the C++ kernels do not build (%s); %s uses torch ops", built, setting)
    return None


if __name__ == "__main__":
    built = _build()
    if isinstance(built, str):
        print(f"the C++ kernels do not build: {built}", file=sys.stderr)
        sys.exit(1)
    print(f"built {built.__file__}")
