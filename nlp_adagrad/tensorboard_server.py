"""TensorBoard served on a free loopback port, for the screenshot script and the tests that
read each plugin back through TensorBoard's own HTTP data endpoints.

`serve(logdir)` starts `python -m tensorboard.main` (the pure-Python loader, so what it serves
does not depend on the optional Rust data server), waits until it has loaded the expected
runs, yields its base URL, and stops it. It raises `TensorBoardUnavailable` with TensorBoard's own
last words when it cannot start.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TensorBoardUnavailable(RuntimeError):
    """TensorBoard did not start, or did not list the runs in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def get_json(base: str, path: str, **params: Any) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return json.loads(get(f"{base}{path}{query}"))


def post_json(base: str, path: str, body: dict) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve(logdir: Path, expect_runs: int = 1, timeout: float = 60) -> Iterator[str]:
    """Serve `logdir`; yield the base URL once `expect_runs` runs have scalars loaded (the
    loader reads a run's event files whole on each pass)."""
    port = free_port()
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                f"--logdir={logdir}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--load_fast=false",
                "--reload_interval=1",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for_runs(proc, base, expect_runs, timeout, output)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_runs(proc, base: str, expect_runs: int, timeout: float, output) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output.seek(0)
            last = output.read().decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise TensorBoardUnavailable(f"tensorboard exited ({proc.returncode}): {last[0]}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            if len(get_json(base, "/data/plugin/scalars/tags")) >= expect_runs:
                return
        time.sleep(0.25)
    raise TensorBoardUnavailable(f"tensorboard loaded fewer than {expect_runs} runs in {timeout} s")
