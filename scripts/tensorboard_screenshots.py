"""Screenshots of TensorBoard as a user sees it, for the README.

    python scripts/tensorboard_screenshots.py            # -> scripts/screenshots/*.png

Trains a two-run sweep on BBC News (`-m optim=adagrad,sgd`, ~15 s), serves TensorBoard on a
loopback port and drives Debian's headless `chromium` (`apt-get install chromium`) through the
DevTools protocol over a pipe (standard library only): Custom Scalars with the first chart's
legend ("Matches") opened, Images at actual size, HParams. Without WebGL, TensorBoard draws
its charts only with `?forceSVG=true` in the URL. `--logdir DIR` shows existing runs instead.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nlp_adagrad.tensorboard_server import TensorBoardUnavailable, serve  # noqa: E402

HEIGHT = 1000  # of the window; each shot keeps its top `clip height` pixels
# Elements inside TensorBoard's Polymer components sit in shadow roots: search through them
DEEP_QUERY = """
function deepAll(selector) {
  const found = [];
  (function walk(node) {
    if (!node) return;
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.children || []) walk(child);
    if (node.matches && node.matches(selector)) found.push(node);
  })(document.body);
  return found;
}
"""
# (file, URL fragment, CSS selector to wait for, JS run before the shot, width, clip height)
SHOTS = [
    (
        # smoothing 0: TensorBoard's default 0.6 smears the first snapshots together
        "custom_scalars.png",
        "/?forceSVG=true#custom_scalars&_smoothingWeight=0",
        "span.matches-text",
        "deepAll('paper-icon-button.toggle-matches-button')[0].click()",
        1400,
        900,
    ),
    (
        "images.png",
        "/?forceSVG=true#images&regexInput=adagrad",
        "img",
        "deepAll('paper-checkbox').find(b => b.textContent.includes('actual image size')).click()",
        1400,
        720,
    ),
    # wide enough for the five ticked hparams and the five ticked metrics
    ("hparams.png", "/?forceSVG=true#hparams", "tr, .row", "", 2300, 300),
]
CHROMIUM_FLAGS = [  # the flags this machine's closed network needs (no background fetches)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


class Chromium:
    """Headless Chromium driven by DevTools protocol messages on fds 3 (in) and 4 (out)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_chrome, from_us = os.pipe()
        to_us, from_chrome = os.pipe()

        def as_fds_3_and_4() -> None:  # dup first: a pipe already at fd 3 would stay cloexec
            a, b = os.dup(to_chrome), os.dup(from_chrome)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            close_fds=False,
            preexec_fn=as_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._out, self._in, self._buffer, self._id = from_us, to_us, b"", 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def send(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=DEEP_QUERY + expression, session=True)
        return result["result"].get("value")

    def shoot(
        self, url: str, wait_for: str, action: str, width: int, height: int, out: Path
    ) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
            session=True,
        )
        self.send("Page.navigate", url=url, session=True)
        deadline = time.monotonic() + 60
        while not self.evaluate(f"deepAll({json.dumps(wait_for)}).length > 0"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: nothing matching {wait_for!r} after 60 s")
            time.sleep(0.5)
        time.sleep(3)  # charts draw after their data arrives
        if action:
            self.evaluate(action)
            time.sleep(2)
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.send("Page.captureScreenshot", clip=clip, session=True)["data"]
        out.write_bytes(base64.b64decode(data))
        # fewer colours: a chart screenshot stays legible at a fraction of the bytes
        Image.open(out).convert("RGB").quantize(colors=64).save(out, optimize=True)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def train_sweep(root: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nlp_adagrad.train",
            "-m",
            "optim=adagrad,sgd",
            "trainer.progress=false",
            f"hydra.sweep.dir={root / 'sweep'}",
        ],
        cwd=root,
        check=True,
        capture_output=True,
    )


def find_chromium() -> str | None:
    """The browser binary itself: Debian's /usr/bin/chromium is a shell wrapper."""
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if path and Path(path).is_file():
            return path
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "screenshots")
    parser.add_argument("--logdir", type=Path, help="runs to show (default: train a sweep)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("no chromium found; install Debian's: apt-get install chromium", file=sys.stderr)
        return 2
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()}, {platform.platform()}, Python {platform.python_version()}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nlp_adagrad-shots-") as tmp:
        root = Path(tmp)
        logdir = args.logdir
        if logdir is None:
            train_sweep(root)
            logdir = root / "sweep"
        runs = len({p.parent for p in logdir.rglob("events.out.tfevents.*")})
        browser = Chromium(chromium, root / "profile")
        try:
            with serve(logdir, expect_runs=runs) as base:
                for name, fragment, wait_for, action, width, height in SHOTS:
                    browser.shoot(base + fragment, wait_for, action, width, height, args.out / name)
                    print(f"wrote {args.out / name}")
        except TensorBoardUnavailable as e:
            print(f"tensorboard could not start: {e}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
