"""Shared pieces of the fault tests (tests/test_faults_*.py): run a command, expect one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def one_line_error(capsys, *needles: str) -> str:
    """The captured stderr is one `error: ...` line (no traceback) containing every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 120,
               **popen) -> subprocess.CompletedProcess:
    """`python -m NLM.min_lm.scripts.<module> args...` in a fresh process (this checkout's code)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", f"NLM.min_lm.scripts.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def no_temp_files(directory: Path) -> bool:
    """Nothing half-written is left: no hidden temporary files in `directory` (recursively)."""
    return not [p for p in Path(directory).rglob(".*") if p.name.endswith(".tmp") or ".tmp" in p.name]
