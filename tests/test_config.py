"""The real conf/ composes with overrides into typed dataclasses; bad overrides are refused."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ValidationError

from nlp_adagrad.config import (
    AdagradConfig,
    BagMode,
    FastTextConfig,
    HubDataConfig,
    SGDConfig,
    SyntheticDataConfig,
)
from nlp_adagrad.errors import UserError
from tests.helpers import make_config


def test_defaults_compose_to_dataclasses():
    cfg = make_config()
    assert cfg.data.name == "bbc_news"
    assert isinstance(cfg.optim, AdagradConfig)
    assert cfg.model.mode is BagMode.mean
    assert cfg.telemetry.rare_max_count == 5 and cfg.telemetry.common_top_k == 100


def test_overrides_reach_the_right_schema():
    cfg = make_config(
        "optim=sgd",
        "optim.lr=0.25",
        "model=fasttext",
        "model.dim=8",
        "data=synthetic",
        "data.num_docs=50",
        "trainer.epochs=3",
    )
    assert isinstance(cfg.optim, SGDConfig) and cfg.optim.lr == 0.25
    assert isinstance(cfg.model, FastTextConfig) and cfg.model.dim == 8
    assert isinstance(cfg.data, SyntheticDataConfig) and cfg.data.num_docs == 50
    assert cfg.trainer.epochs == 3


@pytest.mark.parametrize(
    "preset,column",
    [("ag_news", "text"), ("imdb", "text"), ("yelp_polarity", "text"), ("dbpedia_14", "content")],
)
def test_hub_presets_are_typed(preset, column):
    cfg = make_config(f"data={preset}")
    assert isinstance(cfg.data, HubDataConfig)
    assert cfg.data.text_column == column and "/" in cfg.data.hub_path


@pytest.mark.parametrize(
    "override",
    ["optim.lr=abc", "optim.lrr=1", "optim=nosuch", "data.format=xml", "trainer.batch_size=1.5"],
)
def test_bad_overrides_are_refused_by_hydra(override):
    if override == "data.format=xml":
        override_list = ["data=local", "data.path=x.csv", override]
    else:
        override_list = [override]
    with pytest.raises((ConfigCompositionException, HydraException, ValidationError)):
        make_config(*override_list)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("tokenizer.ngrams=3", "tokenizer.ngrams must be 1"),
        ("data.test_fraction=1.5", "data.test_fraction"),
        ("trainer.device=tpu", "trainer.device"),
    ],
)
def test_cross_field_checks_name_the_key(override, needle):
    with pytest.raises(UserError, match=needle):
        make_config(override)


def test_fasttext_with_adagrad_gets_its_own_measured_learning_rate():
    assert make_config("model=fasttext").optim.lr == 0.5  # conf/model_optim/fasttext_adagrad
    assert make_config("model=fasttext", "optim.lr=2").optim.lr == 2.0  # the command line wins
    assert make_config().optim.lr == 5.0  # logreg keeps Adagrad's default
    assert (
        make_config("model=fasttext", "optim=sgd").optim.lr == 1.0
    )  # no pair file: the optimizer's
