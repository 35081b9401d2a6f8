"""One recipe per task: a function `(cfg, run_dir, writer=None) -> metrics` whose loop is
written out top to bottom on the shared run code (nlp_adagrad.run). `task=<name>` picks one.
"""

from __future__ import annotations

from nlp_adagrad.recipes.classify import classify
from nlp_adagrad.recipes.glove import glove
from nlp_adagrad.recipes.skipgram import skipgram

RECIPES = {"classify": classify, "skipgram": skipgram, "glove": glove}

__all__ = ["RECIPES", "classify", "glove", "skipgram"]
