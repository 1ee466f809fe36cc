"""The SQLite state file as a file: fresh or not, reset aside, and still the one we opened.

A missing file is a fresh install. An existing one that is empty is not: it was
truncated, and opening it would silently start afresh (issue 13), so it is refused
unless the operator asks for `--reset-state`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from runner.store import StateError

log = structlog.get_logger("runner.store")

RESET_ADVICE = (
    "restore it from a backup, or start once with --reset-state to begin afresh "
    "(it is moved aside; run history, counts, pauses and first sightings are forgotten)"
)
LOST_ADVICE = (
    "the daemon writes to a file no longer at that path and starts nothing; restore the "
    "file if it was not meant to go, then restart the daemon"
)
SIDE_FILES = ("-wal", "-shm")


def access_advice(path: str) -> str:
    folder = Path(path).parent
    return (
        f"give the service's user read and write access to it and to its folder {folder} "
        "(SQLite creates its -wal and -shm files there), or choose another path with --state"
    )


def open_error(path: str, exc: sqlite3.Error) -> StateError:
    """What an error of SQLite while opening and checking the file means for the operator."""
    text = str(exc)
    if "not a database" in text:
        problem = "is not a SQLite database (truncated, or a foreign file)"
        return StateError(path, problem, RESET_ADVICE)
    if "malformed" in text or "corrupt" in text:
        return StateError(path, f"is corrupt ({text})", RESET_ADVICE)
    return StateError(path, f"cannot be opened for writing ({text})", access_advice(path))


def prepare(path: str, *, reset: bool) -> None:
    """Before connecting: refuse an empty file, or move the old one aside when resetting."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"its folder cannot be created ({exc.strerror})"
        raise StateError(path, problem, access_advice(path)) from None
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        return  # a fresh install
    except OSError as exc:
        raise StateError(path, f"cannot be read: {exc.strerror}", RESET_ADVICE) from None
    if reset:
        try:
            _move_aside(target)
        except OSError as exc:
            problem = f"cannot be moved aside ({exc.strerror})"
            raise StateError(path, problem, access_advice(path)) from None
    elif size == 0:
        raise StateError(path, "is empty (0 bytes): it was truncated", RESET_ADVICE)


def _move_aside(target: Path) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in ("", *SIDE_FILES):
        source = Path(f"{target}{suffix}")
        if source.exists():
            aside = Path(f"{target}.reset-{stamp}{suffix}")
            source.rename(aside)
            moved.append(str(aside))
    log.warning("state.reset", path=str(target), moved_to=moved)


FILE_MODE = 0o600


@contextlib.contextmanager
def private_files(path: str) -> Iterator[None]:
    """New state files are created 0600 whatever the umask (SQLite gives its -wal and
    -shm the mode of the database file), and existing ones of ours are made 0600."""
    for suffix in ("", *SIDE_FILES):
        with contextlib.suppress(OSError):
            side = Path(f"{path}{suffix}")
            if side.stat().st_uid == os.geteuid() and side.stat().st_mode & 0o077:
                side.chmod(FILE_MODE)
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def identity(path: str) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_dev, st.st_ino


def lost(path: str, expected: tuple[int, int]) -> str | None:
    """Why the file at `path` is no longer the one opened, or None if it still is."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return "was deleted while the daemon ran"
    except OSError as exc:
        return f"cannot be checked: {exc.strerror}"
    if (st.st_dev, st.st_ino) != expected:
        return "was replaced by another file while the daemon ran"
    if st.st_size == 0:
        return "was truncated to 0 bytes while the daemon ran"
    return None
