"""The committed benchmark results say nothing about the machine's file system.

A path such as a temporary run directory or the local Python installation means nothing on another
machine and leaks where a result was measured; the scripts record the numbers and the machine
(benchmarks/machine.py), never a path.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO_ROOT

RESULTS = sorted((REPO_ROOT / "benchmarks" / "results").glob("*.json"))
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=])(?:/(?:tmp|work|root|home|Users|private|var|opt)\b|[A-Za-z]:\\)")


def strings(value) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_path_pattern_catches_local_paths():
    for text in ["/tmp/tmpqafcs0bp/model_best.pt", "source, 724 files from /root/.pyenv/lib/python3.11",
                 "C:\\Users\\me\\run", "/work/wt/x.json", "--out=/home/me/x"]:
        assert ABSOLUTE_PATH.search(text), text
    for text in ["2.22 bytes/token", "Linux-6.18-x86_64", "tokens/s", "benchmarks/results/x.json"]:
        assert not ABSOLUTE_PATH.search(text), text


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_hold_no_local_paths(path):
    found = [s for s in strings(json.loads(path.read_text(encoding="utf-8"))) if ABSOLUTE_PATH.search(s)]
    assert not found, f"{path.name} records local paths: {found}"


def test_there_are_results_to_check():
    assert len(RESULTS) >= 5
