"""The dataclass -> command line layer: types, lists, tuples, booleans, --config files, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from NLM.min_lm.args import arg, parse_config, run_command
from NLM.min_lm.errors import UserError


@dataclass
class Demo:
    data: str = field(metadata=arg("input", positional=True))
    size: int = field(default=3, metadata=arg("a size"))
    rate: float = 0.5
    betas: tuple[float, float] = (0.9, 0.95)
    names: list[str] = field(default_factory=list)
    fast: bool = False
    device: str = field(default="cpu", metadata=arg("where", choices=["cpu", "cuda"]))


def test_flags_parse_to_typed_fields():
    c = parse_config(Demo, ["in.txt", "--size", "7", "--betas", "0.8", "0.9", "--names", "a", "b", "--fast"],
                     "demo", "")
    assert c == Demo(data="in.txt", size=7, rate=0.5, betas=(0.8, 0.9), names=["a", "b"], fast=True)


def test_config_file_sets_values_and_flags_override(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"size": 11, "rate": 0.1, "betas": [0.5, 0.6]}))
    c = parse_config(Demo, ["x", "--config", str(cfg), "--rate", "0.2"], "demo", "")
    assert (c.size, c.rate, c.betas) == (11, 0.2, (0.5, 0.6))


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: 4\nnames: [p, q]\n")
    c = parse_config(Demo, ["x", "--config", str(cfg)], "demo", "")
    assert (c.size, c.names) == (4, ["p", "q"])


def test_unknown_key_in_config_names_file(tmp_path, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"sise": 1}')
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["x", "--config", str(cfg)], "demo", "")
    assert e.value.code == 2
    assert capsys.readouterr().err == f"demo: error: {cfg}: unknown option(s) sise\n"


def test_bad_flag_value_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["x", "--size", "many"], "demo", "")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--size" in err


def test_run_command_turns_user_errors_into_one_line(capsys):
    def run(config):
        raise UserError(f"{config.data}: line 3: bad")

    assert run_command(Demo, run, ["data.txt"], "demo", "") == 2
    assert capsys.readouterr().err == "error: data.txt: line 3: bad\n"


def test_run_command_exit_status_is_0_whatever_run_returns():
    assert run_command(Demo, lambda config: ["out/vocab.json"], ["x"], "demo", "") == 0
    assert run_command(Demo, lambda config: 3, ["x"], "demo", "") == 0
