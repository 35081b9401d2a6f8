"""Fixtures: tiny corpora written to disk in the formats `data=local` reads."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

# Runs in the tests (and the CLI subprocesses they start) cache token ids in a folder of their
# own, never the user's: set before datasets reads it at import.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="nlp_adagrad-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

import datasets  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import tiny_rows  # noqa: E402

datasets.disable_progress_bars()


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    lines = ["body,topic"] + [f'"{r["text"]}",{r["label"]}' for r in tiny_rows()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    return path
