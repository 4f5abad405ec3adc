"""The CLI's flags come from the config dataclasses (train, sweep, eval, features, monitor):
each command's options are exactly its config's fields, and what eval passes on is what
`evaluate` takes."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from sae_fast.cli import PLAN_FLAGS, build_parser, config_from
from sae_fast.config import EvalConfig, FeaturesConfig, MonitorConfig, TrainConfig
from sae_fast.eval import evaluate


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize(
    "command,config",
    [("train", TrainConfig), ("eval", EvalConfig), ("features", FeaturesConfig),
     ("monitor", MonitorConfig)],
)  # fmt: skip
def test_each_commands_flags_are_its_configs_fields(command, config):
    sub = _subparser(command)
    dests = {a.dest for a in sub._actions if a.option_strings and a.dest != "help"}
    extra = set(PLAN_FLAGS) if command == "train" else set()  # several SAEs from one pass
    assert dests == {f.name for f in dataclasses.fields(config)} | extra


def test_eval_flags_build_the_config_and_reach_evaluate():
    args = build_parser().parse_args(["eval", "d", "--max-tokens", "7", "--no-downstream"])
    cfg = config_from(args, EvalConfig)
    assert cfg.max_tokens == 7 and cfg.downstream is False and cfg.hook is None
    params = set(inspect.signature(evaluate).parameters)
    assert set(cfg.evaluate_kwargs()) <= params


def test_monitor_needs_its_rules_and_inputs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["monitor", "d"])
    assert "--rules, --input" in capsys.readouterr().err


def test_collect_takes_the_data_flags_only_and_requires_the_cache():
    from sae_fast.cli import COLLECT_FLAGS

    sub = _subparser("collect")
    dests = {a.dest for a in sub._actions if a.option_strings and a.dest != "help"}
    assert dests == set(COLLECT_FLAGS) and "steps" not in dests and "lr" not in dests
    assert next(a for a in sub._actions if a.dest == "cache").required
    args = build_parser().parse_args(["collect", "--cache", "c", "--max-tokens", "9"])
    cfg = config_from(args, TrainConfig)
    assert cfg.cache == "c" and cfg.max_tokens == 9 and cfg.steps == TrainConfig().steps
