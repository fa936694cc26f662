"""Crash-safe file writing: every output is written to a temporary name and renamed into place.

A rename within one directory is atomic on POSIX and Windows, so a reader (or a user after Ctrl-C)
sees either the old file or the complete new one, never a half-written file.

Three more promises live here, so that every command keeps them the same way:

- An operating-system failure while writing (a full disk, a read-only directory, a path that runs
  through a regular file) becomes one `UserError` naming the output and the cause; the temporary file
  is removed and the previous output stays as it was.
- A temporary name embeds its writer's process id: `.model.pt.<pid>.<random>.tmp`. A writer killed
  outright (SIGKILL, a power cut) cannot remove its temporary file, so the next writer of the same
  output removes those whose process is gone.
- `check_output_dir` / `check_output_file` find the problems above *before* a command does minutes of
  work, by walking the path and creating (and removing) a probe file where the output will go.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from NLM.min_lm.errors import UserError


def _current_umask() -> int:
    """The process umask (it can only be read by setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------------
# Temporary names and their clean-up
# ------------------------------------------------------------------------------------------------


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh hidden name beside `path` that names its writer: `.<name>.<pid>.<hex><suffix>.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}.tmp")


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (or directories) of `path` left by writers that no longer run.

    Only names made by `temp_path` for this very `path` are looked at, and only those whose process is
    gone are removed, so a concurrent writer's file is never touched. Returns what was removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+.*\.tmp")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):  # another writer may be cleaning up the same file
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
    return removed


# ------------------------------------------------------------------------------------------------
# Operating-system errors as one line
# ------------------------------------------------------------------------------------------------


def _blocking_file(path: Path) -> Path | None:
    """The first existing component of `path` (itself excluded) that is not a directory, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def describe_os_error(path: str | os.PathLike, error: OSError, action: str = "write") -> str:
    """One line saying which output failed and why, in words a user can act on."""
    path = Path(path)
    blocker = _blocking_file(path)
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        return f"cannot {action} {path}: {blocker} is a file, not a directory"
    cause = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        cause = "no space left on the device"
    return f"cannot {action} {path}: {cause}"


def make_dirs(directory: str | os.PathLike, flag: str = "") -> Path:
    """`mkdir -p`, with a failure as a UserError naming the directory (and the flag that gave it)."""
    directory = Path(directory)
    prefix = f"{flag} " if flag else ""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{prefix}{directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(prefix + describe_os_error(directory, e, "create the directory")) from None
    return directory


def check_output_dir(directory: str | os.PathLike, flag: str = "") -> Path:
    """Fail now, not after the work, if files cannot be written into `directory`.

    Nothing is created: a probe file is made (and removed) in `directory` or, if it does not exist yet,
    in its nearest existing ancestor, where creating it would happen.
    """
    directory = Path(directory)
    prefix = f"{flag} " if flag else ""
    blocker = directory if directory.exists() and not directory.is_dir() else _blocking_file(directory)
    if blocker is not None:
        raise UserError(f"{prefix}cannot write into {directory}: {blocker} is a file, not a directory")
    existing = next(p for p in (directory, *directory.parents) if p.exists() or p == Path(p.anchor))
    probe = temp_path(existing / "probe")
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise UserError(prefix + describe_os_error(directory, e, "write into")) from None
    return directory


def missing_dirs(directory: str | os.PathLike) -> list[Path]:
    """The directories that creating `directory` would create, deepest first (to undo it)."""
    directory = Path(directory).absolute()
    return [p for p in (directory, *directory.parents) if not p.exists()]


def check_output_file(path: str | os.PathLike, flag: str = "") -> Path:
    """Fail now if `path` cannot be written: it is a directory, or its directory cannot take files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag + ' ' if flag else ''}{path} is a directory; give a file name")
    check_output_dir(path.parent, flag)
    return path


# ------------------------------------------------------------------------------------------------
# Atomic writing
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike, suffix: str = "") -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; when the block succeeds, rename them all into place.

    All files are complete before the first rename, so several outputs that belong together (a vocab and
    its merges) are never left half old and half new by a failed write. On any error every temporary file
    is deleted, the previous outputs stay, and an operating-system error while writing becomes a
    UserError naming the output. `suffix` keeps an extension on the temporary names for writers that
    insist on one (e.g. `np.save` appends `.npy` to names without it).
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            make_dirs(target.parent)
            remove_stale_temps(target)
            tmp = temp_path(target, suffix)
            # an exclusive create, private (0600) until complete; no other writer can have this name
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            temps.append(tmp)
        yield temps
        mode = 0o666 & ~_current_umask()  # the permissions a plain open() would have given
        for tmp in temps:
            os.chmod(tmp, mode)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except Exception as raised:
        _remove(temps)
        e = _os_error_behind(raised)
        if e is None:
            raise
        ours = {str(p): target for target in targets for p in (target, target.parent)}
        ours |= {str(tmp): target for tmp, target in zip(temps, targets[: len(temps)], strict=True)}
        if e.filename is None:  # a write through a file object: the error does not say which file
            raise UserError(describe_os_error(" / ".join(map(str, targets)), e)) from None
        if str(e.filename) in ours:
            raise UserError(describe_os_error(ours[str(e.filename)], e)) from None
        raise  # about some other file the block was reading: not ours to explain
    except BaseException:
        _remove(temps)
        raise


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that caused `error`, if any: a writer may wrap it (torch.save, failing to write, raises
    an opaque RuntimeError "unexpected pos ..." while handling the OSError of the full disk)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _remove(temps: list[Path]) -> None:
    for tmp in temps:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it."""
    with atomic_paths(path, suffix=suffix) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# One writer per directory
# ------------------------------------------------------------------------------------------------

LOCK_NAME = ".minlm.lock"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, flag: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `directory` for the block; while one process holds it, another fails at
    once with a UserError naming the holder's process id.

    The lock is an advisory `flock` on `<directory>/.minlm.lock`, which holds the owner's pid. The
    operating system drops it when the owner dies, even by SIGKILL, so it never goes stale. The file is
    removed on release; a process that locked a file just removed this way notices (the path no longer
    leads to what it locked) and tries again. Where `fcntl` is missing (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    directory = make_dirs(directory, flag)
    path = directory / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(describe_os_error(path, e, "create the lock file")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{flag + ' ' if flag else ''}{directory} is in use by another run (process "
                            f"{holder}); wait for it to finish or choose another directory") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # it was released and removed between our open and our lock: try again
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)

