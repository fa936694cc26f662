"""The `minlm` command line: every command's --help and flag errors answer without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from NLM.min_lm.cli import ALIASES, COMMANDS, main

# Runs one command line in a fresh interpreter, then reports its exit status and whether torch was loaded.
PROBE = """
import sys
from NLM.min_lm.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as e:
    status = e.code
print("status", status, "torch", "torch" in sys.modules, file=sys.stderr)
"""


def probe(*argv: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    *messages, report = result.stderr.strip().splitlines()
    return report, result.stdout + "\n".join(messages)


@pytest.mark.parametrize("command", [*COMMANDS, *ALIASES])
def test_help_answers_without_importing_torch(command):
    report, output = probe(command, "--help")
    assert report == "status 0 torch False"
    assert output.startswith(f"usage: minlm {ALIASES.get(command, command)} ")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_flag_is_one_line_without_importing_torch(command):
    report, output = probe(command, "--no_such_flag")
    assert report == "status 2 torch False"
    assert output.strip().count("\n") == 0 and f"minlm {command}: error: " in output


def test_usage_lists_every_command_but_not_the_old_names(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    listed = [line.split()[0] for line in usage.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) and not set(listed) & set(ALIASES)
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
