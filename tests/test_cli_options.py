"""One source of CLI options (issue 20): `hybridcert certify`'s options come from the config fields."""

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from hybridcert import config as cfg
from hybridcert.cli import add_config_arguments, build_parser
from hybridcert.config import ConfigError, RunConfig, parse_target

GROUPS = (cfg.DataConfig, cfg.ModelConfig, cfg.NoiseConfig, cfg.DecisionConfig,
          cfg.EstimationConfig, cfg.ExecutorConfig)


def _certify() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    return commands.choices["certify"]


def test_every_config_field_is_an_option_with_the_fields_default():
    options = {a.dest: a for a in _certify()._actions}
    for kind in GROUPS:
        for f in dataclasses.fields(kind):
            if f.metadata.get("cli", True) is False:
                assert f.name not in options
                continue
            action = options.pop(f.name)
            assert action.default == f.default, f.name
            assert action.help and action.help.strip(), f.name  # every option explains itself
            assert action.container.title == kind.__name__.removesuffix("Config").lower()
    # What is not a config field stays explicit: help, --debug, output and logging.
    assert set(options) == {"help", "debug", "out", "no_report", "no_progress", "verbose"}


def test_defaults_and_choices_are_written_once():
    args = _certify().parse_args([])
    assert RunConfig.from_args(args) == RunConfig()  # every default is the dataclass's
    options = {a.dest: a for a in _certify()._actions}
    for name, choices in (("kernel", cfg.KERNELS), ("threat", cfg.THREATS),
                          ("baseline", cfg.BASELINES), ("decision", cfg.DECISIONS),
                          ("protocol", cfg.PROTOCOLS), ("executor", cfg.EXECUTORS),
                          ("hf_rule", cfg.HF_RULES), ("hf_task", cfg.HF_TASKS),
                          ("attacker_alphabet", cfg.ATTACKER_ALPHABETS),
                          ("sampling", cfg.SAMPLINGS), ("dtype", cfg.DTYPES)):
        assert tuple(options[name].choices) == choices, name


def test_options_parse_into_the_configuration():
    args = _certify().parse_args(["--sigma", "0.25", "--n", "500", "--target", "1:0.5",
                                  "--target", "0:0", "--batch-size", "auto", "--model", "hf:x",
                                  "--cpus-per-worker", "0.5", "--constant-label", "1",
                                  "--no-progress"])
    config = RunConfig.from_args(args)
    assert config.noise.sigma == 0.25 and config.estimation.n == 500
    assert config.estimation.targets == ((1, 0.5), (0, 0.0))
    assert config.estimation.batch_size == "auto" and config.executor.cpus_per_worker == 0.5
    assert config.data.constant_label == 1 and config.executor.progress is False


def test_a_parser_shows_a_config_error_as_is(capsys):
    with pytest.raises(SystemExit):
        _certify().parse_args(["--target", "1"])
    assert "argument --target: --target: expected D:R, a budget D" in capsys.readouterr().err


def test_the_generator_serves_another_command():
    @dataclass(frozen=True)
    class ServeConfig:
        """How a server answers: its port and its questions."""

        port: int = field(default=8000, metadata={"help": "port to listen on"})
        host: str = field(default="127.0.0.1", metadata={"flag": "--bind", "help": "address"})
        mode: str = field(default="a", metadata={"choices": ("a", "b"), "help": "mode"})
        targets: tuple | None = field(default=None, metadata={
            "flag": "--target", "type": parse_target, "action": "append", "help": "a question"})
        internal: bool = field(default=True, metadata={"cli": False})

    parser = add_config_arguments(argparse.ArgumentParser(), ServeConfig, cfg.NoiseConfig,
                                  overrides={"mode": {"help": "overridden"}})
    args = parser.parse_args(["--port", "9", "--bind", "0.0.0.0", "--target", "2:1",
                              "--sigma", "0.1"])
    assert (args.port, args.host, args.mode, args.targets, args.sigma) == (
        9, "0.0.0.0", "a", [(2, 1.0)], 0.1)
    assert not hasattr(args, "internal")
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["mode"] == "overridden"
    assert [g.title for g in parser._action_groups][-2:] == ["serve", "noise"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_parse_target_is_the_one_check_of_a_target():
    assert parse_target("3:0.25") == (3, 0.25)
    with pytest.raises(ConfigError, match="--target: expected D:R with a finite radius"):
        parse_target("1:nan")
