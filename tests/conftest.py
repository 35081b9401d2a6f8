"""Fixtures: tiny corpora written to disk in the formats `data=local` reads."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from tests.helpers import tiny_rows

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
