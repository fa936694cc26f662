"""Build a command line from a config dataclass, so each script has exactly one config object.

Every command is a plain function `run(config)` callable from Python, and its `main()` is one call of
`run_command`. Its flags are generated from the dataclass fields (name, type, default, help), in the
spirit of litgpt. `--config FILE` (JSON or YAML) supplies values for any field, and flags given on the
command line override it.

Field metadata (via `arg(...)`) adds a help string, makes a field positional, or restricts choices.
Mistakes become one `error: ...` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from NLM.min_lm.errors import UserError

C = TypeVar("C")


def arg(help: str, *, positional: bool = False, choices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Metadata for a config field: `x: int = field(default=1, metadata=arg("what x is"))`."""
    return {"help": help, "positional": positional, "choices": choices}


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the message; we keep the message only, on one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X, so the flag parses as X and None stays the default."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any, default: Any) -> None:
    meta = f.metadata
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("choices") is not None:
        kwargs["choices"] = list(meta["choices"])
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (list, Sequence):
        kwargs["type"] = typing.get_args(tp)[0]
        kwargs["nargs"] = "+" if default is dataclasses.MISSING else "*"
    elif origin is tuple:
        item_types = typing.get_args(tp)
        kwargs["type"] = item_types[0]
        kwargs["nargs"] = len(item_types)
    else:
        kwargs["type"] = tp
    if meta.get("positional"):
        if default is not dataclasses.MISSING:
            kwargs["nargs"] = "?" if "nargs" not in kwargs else "*"
            kwargs["default"] = default
        parser.add_argument(f.name, **kwargs)
        return
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
        if kwargs["help"] and default is not None and tp is not bool:
            kwargs["help"] += f" (default: {default})"
    parser.add_argument(f"--{f.name}", **kwargs)


def load_config_file(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """Read a JSON or YAML mapping of field values; unknown keys are an error naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{path}: reading YAML needs PyYAML (pip install 'min-lm[yaml]')") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return data


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str, description: str) -> C:
    """Parse `argv` into an instance of the dataclass `cls` (with `--config FILE` support)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    argv = list(sys.argv[1:] if argv is None else argv)

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = _OneLineParser(prog=prog, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        file_values = load_config_file(known.config, {f.name for f in fields}) if known.config else {}
    except UserError as e:
        parser.error(str(e))
    parser.add_argument("--config", help="JSON or YAML file of option values; flags override it")
    for f in fields:
        if f.name in file_values:
            default = file_values[f.name]
            if isinstance(default, list) and typing.get_origin(_unwrap_optional(hints[f.name])) is tuple:
                default = tuple(default)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        _add_field(parser, f, hints[f.name], default)
    ns = vars(parser.parse_args(argv))
    values = {f.name: ns[f.name] for f in fields}
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[name])) is tuple:
            values[name] = tuple(value)
    try:
        return cls(**values)
    except (UserError, ValueError, TypeError) as e:
        parser.error(str(e))


def run_command(cls: type[C], run: Callable[[C], object], argv: Sequence[str] | None, prog: str,
                description: str | None) -> int:
    """The whole `main()` of a command: parse `argv` into `cls`, call `run(config)`, return the exit status.

    User mistakes (UserError, a missing or unreadable file) become one `error: ...` line and status 2,
    Ctrl-C becomes status 130; a normal return is status 0 (what `run` returns is for library callers).
    """
    config = parse_config(cls, argv, prog, description or "")
    try:
        run(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
