"""The README's Library usage snippet runs exactly as written (the seed's public example)."""

from __future__ import annotations

import re
import shutil

import torch
from conftest import REPO_ROOT


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_library_usage_snippet_runs_as_written(data_dir, tmp_path, monkeypatch):
    shutil.copy(data_dir / "gpt2_vocab.json", tmp_path / "vocab.json")
    shutil.copy(data_dir / "gpt2_merges.txt", tmp_path / "merges.txt")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(readme_block("## Library usage"), "README.md", "exec"), namespace)
    prompt, output = namespace["prompt_ids"], namespace["output_ids"]
    assert output.shape == (len(prompt) + 50,) and output[: len(prompt)].tolist() == prompt
    assert namespace["text"].startswith("Hello world")
    assert namespace["text"] == namespace["tokenizer"].decode(output.tolist())
