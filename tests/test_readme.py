"""The documentation is true: every Python block of README.md and docs/*.md runs as written.

Each block runs in a fresh namespace, in its own copy of a small working directory holding what the
README's four steps would make (data/train.txt and valid.txt, a tokenizer in tokenizers/, token arrays in
data/tokenized/, a checkpoint in checkpoints/model.pt) plus GPT-2's vocab.json and merges.txt, so a block
reads the paths it names. The sizes are tiny; a block that needs more should say so in its own code.

A block that cannot run here (say, one that needs a GPU) is marked by the line right before its opening
fence: `<!-- not-run: why -->`. The test refuses a mark without a reason. No block carries one today.

Beside the Python blocks, the commands in bash blocks and in `minlm ...` code spans must use flags their
command has, and relative links must point at files and headings that exist: both go stale silently when
the code moves.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from NLM.min_lm import cli
from NLM.min_lm.tokenization import BPETokenizer, train_bpe
from NLM.min_lm.transformer import TransformerLM, save_checkpoint

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINKED_DOCUMENTS = [*DOCUMENTS, REPO_ROOT / "benchmarks" / "README.md"]
EOT = "<|endoftext|>"
NOT_RUN = re.compile(r"<!--\s*not-run:(.*?)-->")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    heading: str  # the nearest heading above it
    ordinal: int  # 0 for the first block of its language under that heading, 1 for the next, ...
    not_run: str | None  # the reason given by a `<!-- not-run: ... -->` mark, "" if the mark has none

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of `path`, in order, with their language and the heading they sit under."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            start, language = i, line[3:].strip()
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mark = NOT_RUN.search(previous)
            ordinal = sum(b.heading == heading and b.language == language for b in blocks)
            blocks.append(Block(path, start + 1, language, "\n".join(lines[start + 1:i]) + "\n", heading,
                                ordinal, mark.group(1).strip() if mark else None))
        i += 1
    return blocks


PYTHON_BLOCKS = [b for path in DOCUMENTS for b in code_blocks(path) if b.language == "python"]


def test_block_parser_finds_languages_marks_and_headings(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# A\n```python\nx = 1\n```\n## B\n<!-- not-run: needs a GPU -->\n\n"
                   "```python\ny = 2\n```\n```bash\nls\n```\n```python\n```\n")
    blocks = code_blocks(doc)
    assert [(b.line, b.language, b.code, b.heading, b.ordinal, b.not_run) for b in blocks] == [
        (2, "python", "x = 1\n", "A", 0, None),
        (8, "python", "y = 2\n", "B", 0, "needs a GPU"),
        (11, "bash", "ls\n", "B", 0, None),
        (14, "python", "\n", "B", 1, None),
    ]


def test_every_document_with_python_is_collected():
    counted = {path.name: sum(b.path == path for b in PYTHON_BLOCKS) for path in DOCUMENTS}
    assert counted["README.md"] >= 3 and counted["api.md"] >= 5, counted


@pytest.fixture(scope="session")
def workspace(data_dir, tmp_path_factory) -> Path:
    """What the README's four steps make, in miniature, plus GPT-2's files under the README's names."""
    root = tmp_path_factory.mktemp("docs_workspace")
    (root / "data" / "tokenized").mkdir(parents=True)
    (root / "tokenizers").mkdir()
    (root / "checkpoints").mkdir()
    shutil.copy(data_dir / "gpt2_vocab.json", root / "vocab.json")
    shutil.copy(data_dir / "gpt2_merges.txt", root / "merges.txt")

    stories = (data_dir / "tinystories_v1_train_head_2MiB.txt").read_text(encoding="utf-8")
    train_text = stories[:stories.rindex(EOT, 0, 60_000) + len(EOT)]
    valid_text = stories[len(train_text):len(train_text) + 12_000]
    (root / "data" / "train.txt").write_text(train_text, encoding="utf-8")
    (root / "data" / "valid.txt").write_text(valid_text, encoding="utf-8")

    vocab, merges = train_bpe(root / "data" / "train.txt", 400, [EOT], num_workers=1)
    tokenizer = BPETokenizer(vocab, merges, [EOT])
    tokenizer.save(root / "tokenizers" / "train_vocab.json", root / "tokenizers" / "train_merges.txt")
    for name, text in (("train", train_text), ("valid", valid_text)):
        ids = np.array(tokenizer.encode(text), dtype=np.uint16)
        np.save(root / "data" / "tokenized" / f"{name}.npy", ids)

    torch.manual_seed(0)
    model = TransformerLM(vocab_size=len(tokenizer), context_length=64, d_model=32, num_layers=2, num_heads=4,
                          d_ff=96)
    save_checkpoint(model, None, 0, root / "checkpoints" / "model.pt")
    return root


def run_block(block: Block) -> dict:
    """Execute the block as a script would run, in the current directory; return its namespace."""
    namespace = {"__name__": "__main__"}
    torch.manual_seed(0)
    exec(compile(block.code, str(block.path), "exec"), namespace)
    return namespace


def check_library_usage(namespace: dict) -> None:
    """The seed's example: 50 new ids after the prompt, decoded by the same tokenizer."""
    prompt, output = namespace["prompt_ids"], namespace["output_ids"]
    assert output.shape == (len(prompt) + 50,) and output[: len(prompt)].tolist() == prompt
    assert namespace["text"].startswith("Hello world")
    assert namespace["text"] == namespace["tokenizer"].decode(output.tolist())


def check_load_model(namespace: dict) -> None:
    """The trained model continues the prompt and stops at <|endoftext|> or after 100 new tokens."""
    tok, ids = namespace["tok"], namespace["ids"].tolist()
    prompt = tok.encode("Once upon a time")
    assert ids[: len(prompt)] == prompt and len(prompt) < len(ids) <= len(prompt) + 100
    eos = tok.encode("<|endoftext|>")[0]
    assert eos not in ids[:-1] and (len(ids) == len(prompt) + 100 or ids[-1] == eos)


# Blocks whose result is worth more than "it ran": (file, heading, ordinal) -> a check of the namespace.
CHECKS = {
    ("README.md", "Library usage", 0): check_library_usage,
    ("README.md", "Library usage", 1): check_load_model,
}


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs(block, workspace, tmp_path, monkeypatch, one_thread):
    if block.not_run is not None:
        assert block.not_run, f"{block.id}: a not-run mark must say why"
        pytest.skip(f"{block.id} is marked not-run: {block.not_run}")
    if "transformers" in block.code:
        pytest.importorskip("transformers", reason="the block uses the hf extra")
    shutil.copytree(workspace, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    namespace = run_block(block)
    check = CHECKS.get((block.path.name, block.heading, block.ordinal))
    if check is not None:
        check(namespace)


def test_checked_blocks_exist():
    present = {(b.path.name, b.heading, b.ordinal) for b in PYTHON_BLOCKS}
    assert set(CHECKS) <= present


# ---- commands and links ---------------------------------------------------------------------------------

COMMAND = re.compile(r"(?:\bminlm\s+([a-z][a-z-]*)|-m\s+NLM\.min_lm\.scripts\.(\w+))")


def command_lines(path: Path) -> list[str]:
    """Shell commands of `path`: bash blocks (continuation lines joined) and `minlm ...` code spans."""
    text = path.read_text(encoding="utf-8")
    commands = [line for b in code_blocks(path) if b.language == "bash"
                for line in b.code.replace("\\\n", " ").split("\n")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [span.replace("\n", " ") for span in re.findall(r"`(minlm [^`]+)`", prose)]
    return commands


def command_flags(command: str) -> str:
    """`minlm <command> --help`, as the user sees it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def documented_uses() -> list[tuple[str, str, list[str]]]:
    """(document, command, flags used) for every command line in the documents."""
    modules = {module: name for name, (module, _) in cli.COMMANDS.items()}
    uses = []
    for path in DOCUMENTS:
        for line in command_lines(path):
            for found in COMMAND.finditer(line):
                name = found.group(1) or modules.get(found.group(2), found.group(2))
                name = cli.ALIASES.get(name, name)
                tail = line[found.end():].split("#")[0]
                flags = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", tail)
                uses.append((path.name, name, flags))
    return uses


def test_documented_commands_and_flags_exist():
    uses = documented_uses()
    assert {"train", "generate", "tokenize", "train-tokenizer", "quickstart"} <= {name for _, name, _ in uses}
    helps: dict[str, str] = {}
    for document, name, flags in uses:
        assert name in cli.COMMANDS, f"{document}: unknown command minlm {name}"
        if name not in helps:
            helps[name] = command_flags(name)
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", helps[name]), f"{document}: minlm {name} has no {flag}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_matches_github():
    assert slug("Hugging Face: `NLM.min_lm.hf`") == "hugging-face-nlmmin_lmhf"
    assert slug("Quick Start: the four steps") == "quick-start-the-four-steps"


@pytest.mark.parametrize("path", LINKED_DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: link to missing {target}"
        if anchor:
            headings = [slug(line.lstrip("#")) for line in linked.read_text(encoding="utf-8").split("\n")
                        if line.startswith("#")]
            assert anchor in headings, f"{path.name}: no heading #{anchor} in {linked.name}"


def code_map() -> list[str]:
    """The paths in the first column of the README's "Where things live" table, relative to NLM/min_lm."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Where things live"):].split("\n\n")[1]
    rows = [line.split("|")[1] for line in table.split("\n")[2:]]
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row)]


def test_code_map_names_every_module_and_only_real_ones():
    package = REPO_ROOT / "NLM" / "min_lm"
    listed = code_map()
    assert len(listed) >= 15
    for path in listed:
        assert (package / path).exists(), f"README's code map names {path}, which is not in NLM/min_lm"
    modules = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"]
    folders = [path for path in listed if path.endswith("/")]
    unmapped = [m for m in modules if m not in listed and not any(m.startswith(f) for f in folders)]
    assert not unmapped, f"modules missing from the README's code map: {unmapped}"
