"""Every option and argument is explained, every command shows examples, and 'bigseg config' prints settings."""

import click
import pytest
import yaml
from click.testing import CliRunner

from bigseg import config
from bigseg.cli import main

COMMANDS = sorted(main.commands)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_every_argument_is_explained(name):
    cmd = main.commands[name]
    ctx = click.Context(cmd, info_name=name, parent=click.Context(main, info_name="bigseg"))
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"bigseg {name} {param.opts[0]}: no help text"
    # click gives arguments no help of their own: the command's help names and explains each
    body = cmd.help or ""
    for param in cmd.params:
        if isinstance(param, click.Argument):
            assert param.human_readable_name in body, f"bigseg {name}: {param.human_readable_name} unexplained"
    if any(p.name == "config" for p in cmd.params):
        assert "YAML settings file" in body and "metaldam" in body


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_shows_examples_kept_as_lines(name):
    res = _invoke(name, "--help")
    assert res.exit_code == 0
    examples = res.output.split("Examples:\n", 1)[1].splitlines()
    # one example a line, not rewrapped into a paragraph
    assert examples and all(line.strip().startswith("bigseg ") for line in examples if line.strip())
    assert any(f"bigseg {name}" in line for line in examples)


def test_config_without_arguments_prints_the_defaults():
    res = _invoke("config")
    assert res.exit_code == 0
    assert res.output == config.default_yaml()
    assert yaml.safe_load(res.output) == config.defaults()


def test_config_with_a_file_and_sets_prints_every_setting_checked(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("max_iter: 50\nfeatures: extended\n")
    res = _invoke("config", cfg, "--set", "spatial_weight=0", "-k", "4")
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.output)
    expected = config.load(cfg, {"n_components": 4}, ["spatial_weight=0"])
    assert printed == expected and set(printed) == set(config.defaults())
    # what it prints is itself a settings file giving the same settings
    again = tmp_path / "again.yaml"
    again.write_text(res.output)
    assert config.load(again) == expected
    assert "max_iter: 50  # default: 400" in res.output.splitlines()


def test_config_with_a_shipped_name():
    res = _invoke("config", "metaldam")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["crop_bottom"] != config.defaults()["crop_bottom"]


@pytest.mark.parametrize("text, key", [("max_itre: 50\n", "max_itre"), ("max_iter: -3\n", "max_iter")])
def test_config_with_a_bad_file_fails_in_one_line_naming_the_key(tmp_path, text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = _invoke("config", cfg)
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and key in lines[0], res.output
    assert "bad.yaml" in lines[0]       # which file, too


def test_config_with_a_bad_set_fails_in_one_line_naming_the_key():
    res = _invoke("config", "--set", "spatial_weight=-1")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "spatial_weight" in lines[0], res.output
