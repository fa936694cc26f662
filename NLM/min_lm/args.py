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
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import describe_os_error

C = TypeVar("C")


def arg(help: str, *, positional: bool = False, choices: Sequence[Any] | None = None,
        low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """Metadata for a config field: `x: int = field(default=1, metadata=arg("what x is"))`.

    `low` / `high` bound a number (inclusive); every number is checked for its type and finiteness anyway
    (see `check_value`).
    """
    return {"help": help, "positional": positional, "choices": choices, "low": low, "high": high}


# Ints beyond this are no sensible size, count or seed, and overflow numpy's and torch's int64.
INT_LIMIT = 2**63


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def check_value(name: str, value: Any, tp: Any, meta: Mapping[str, Any] | None = None) -> None:
    """Raise UserError unless `value` has the field's type `tp` and lies in its range.

    The one place every number of every command is checked, from the command line, a config file or
    Python alike: floats must be finite (NaN passes every `<` test, so a per-flag check like `lr < 0`
    misses it, and inf turns into NaN later), ints must fit in 64 bits, `low`/`high` from `arg()` hold.
    """
    meta = meta or {}
    flag = f"--{name}"
    optional = _unwrap_optional(tp) is not tp
    tp = _unwrap_optional(tp)
    if value is None and optional:
        return
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{flag} must be a list, got {value!r}")
        item_types = typing.get_args(tp) or (Any,)
        if origin is tuple and Ellipsis not in item_types and len(value) != len(item_types):
            raise UserError(f"{flag} must be {len(item_types)} values, got {value!r}")
        for i, item in enumerate(value):
            item_type = item_types[0] if origin is not tuple else item_types[min(i, len(item_types) - 1)]
            check_value(name, item, item_type, meta)
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -INT_LIMIT < value < INT_LIMIT:
            raise UserError(f"{flag} must be an integer of at most 64 bits, got {value}")
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    elif tp is str:
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise UserError(f"{flag} must be {_type_name(tp)}, got {value!r}")
    if meta.get("low") is not None and value < meta["low"]:
        raise UserError(f"{flag} must be at least {meta['low']}, got {value}")
    if meta.get("high") is not None and value > meta["high"]:
        raise UserError(f"{flag} must be at most {meta['high']}, got {value}")


def check_fields(config: Any) -> None:
    """`check_value` for every field of a config dataclass (call it first in `__post_init__`)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        check_value(f.name, getattr(config, f.name), hints[f.name], f.metadata)


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
    file_values: dict[str, Any] = {}
    try:
        if known.config:
            file_values = load_config_file(known.config, {f.name for f in fields})
        for f in fields:  # a file's values skip argparse's conversion: check their types here
            if f.name in file_values:
                try:
                    check_value(f.name, file_values[f.name], hints[f.name], f.metadata)
                except UserError as e:
                    raise UserError(f"{known.config}: {str(e).removeprefix('--')}") from None
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
        for f in fields:
            check_value(f.name, values[f.name], hints[f.name], f.metadata)
        return cls(**values)
    except (UserError, ValueError, TypeError, OverflowError) as e:
        parser.error(str(e))


def _error_line(message: str) -> None:
    """Write `error: message` with its newline in one write: under torchrun every rank shares one stderr
    pipe, and `print` (text, then newline) could let another rank's line land in between."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


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
        _error_line(str(e))
        return 2
    except OSError as e:  # any operating-system failure the library did not explain itself
        known_path = e.filename is not None
        _error_line(describe_os_error(e.filename, e, "use") if known_path else str(e.strerror or e))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
