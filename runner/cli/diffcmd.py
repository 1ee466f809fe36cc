"""`ductape-runner diff OLD NEW`: review a change of the jobs folder before it merges.

Each side is a folder or a Git revision of one (`main:jobs.d`). Exit status: 0 when NEW
is valid, 1 when a file of NEW is invalid, 2 on a usage error or a side that cannot be
read, 3 when NEW is valid but has a consequence named by `--fail-on`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner.settings import Settings

if TYPE_CHECKING:
    from runner.cli.sides import Side

BLOCKED = 3
FORMATS = ("text", "markdown", "json")


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The `diff` subcommand, registered on the command line's subparsers."""
    from runner.daemon.consequences import CONSEQUENCES

    diff = sub.add_parser(
        "diff", help="review a change of the jobs folder: two folders or Git revisions"
    )
    config(diff)
    sides = [
        diff.add_argument("old", metavar="OLD", help="folder, or REV:PATH such as main:jobs.d"),
        diff.add_argument("new", metavar="NEW", help="folder, or REV:PATH such as HEAD:jobs.d"),
    ]
    diff.add_argument(
        "-n", type=_count, default=3, metavar="N", help="fire times per job (default 3)"
    )
    diff.add_argument("--format", choices=FORMATS, default="text", help="text (default), "
                      "markdown (a pull-request comment) or json")  # fmt: skip
    diff.add_argument(
        "--fail-on", type=_ids, action="extend", default=[], metavar="ID[,ID...]",
        help=f"exit {BLOCKED} when one of these consequences occurs: "
        + ", ".join(CONSEQUENCES),
    )  # fmt: skip
    diff.add_argument(
        "--now", type=_instant, metavar="INSTANT",
        help="ISO 8601 instant the fire times count from (default: now)",
    )  # fmt: skip
    sides.append(diff.add_argument(
        "--repo", type=Path, default=Path(), metavar="DIR",
        help="Git repository the revisions are read from (default: the current folder)",
    ))  # fmt: skip
    for action in sides:  # folders, for the completion scripts (main._paths)
        action.complete = "dir"  # type: ignore[attr-defined]
    diff.set_defaults(handler=cmd_diff)


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= number <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, not {number}")
    return number


def _ids(text: str) -> list[str]:
    from runner.daemon.consequences import CONSEQUENCES

    ids = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [i for i in ids if i not in CONSEQUENCES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown consequence {', '.join(unknown)} (known: {', '.join(CONSEQUENCES)})"
        )
    return ids


def _instant(text: str) -> datetime:
    from runner.jobs.durations import parse_timestamp

    try:
        return parse_timestamp(text, UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_diff(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli import diffrender
    from runner.cli.sides import read_side
    from runner.daemon.review import compare
    from runner.jobs.loader import Defaults, Limits

    limits = Limits(max_file_bytes=settings.max_file_bytes)
    defaults = Defaults(product=settings.product, env=settings.env)
    new = read_side(args.new, args.repo, limits, defaults)
    as_read = read_side(args.old, args.repo, limits, defaults)
    old = as_read.rebased(new.root)
    now = args.now or datetime.now(UTC)
    review = compare(old.files, new.files, now, args.n)
    notes = _notes(as_read, new, review.old_invalid)
    report = diffrender.Report(review, old.label, new.label, notes, args.fail_on)
    render = {"text": diffrender.text, "markdown": diffrender.markdown}
    print(render.get(args.format, diffrender.as_json)(report))
    if not review.valid:
        return 1
    return BLOCKED if report.blocked else 0


def _notes(old: Side, new: Side, old_invalid: list[str]) -> list[str]:
    """What the reader should know about the sides: an empty one, files the old one refuses."""
    notes = [side.note for side in (old, new) if side.note]
    for path in old_invalid:
        shown = old.root + path.removeprefix(new.root)  # as the old side names it
        notes.append(
            f"{shown} is invalid in {old.label}: its jobs count as absent there"
            " (the daemon may still run an earlier version of them)"
        )
    return notes
