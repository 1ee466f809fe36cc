"""The reconciliation diff: what the folder wants against what the schedule holds, as a plan.

Pure: no I/O, no clock. The scanner (runner.daemon.folder) reads the folder into `FileState`s;
`compute_plan` turns them and the schedule's current digests into a `Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runner.errors import Problem
from runner.jobs.loader import LoadedJob


@dataclass
class FileState:
    """One job file as last read: its content, what it yields, and its last good jobs.

    `last_good_jobs` is None until a version of the file was accepted; an accepted
    version that defines nothing is an empty list.
    """

    path: str
    content_hash: str
    jobs: list[LoadedJob] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    last_good_jobs: list[LoadedJob] | None = None
    source: bytes | None = None  # content read, until the daemon has stored it (valid files)


@dataclass
class Plan:
    """What applying the folder would change: names by action, plus why files were refused."""

    add: list[LoadedJob] = field(default_factory=list)
    update: list[LoadedJob] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    kept_last_good: dict[str, list[str]] = field(default_factory=dict)  # path -> job names
    guard: str | None = None  # set when removals were held back by the mass-deletion guard
    desired: dict[str, LoadedJob] = field(default_factory=dict)
    accepted: dict[str, list[LoadedJob]] = field(default_factory=dict)  # path -> new good jobs
    unsettled: list[str] = field(default_factory=list)  # paths still being written: re-check

    @property
    def changes(self) -> int:
        return len(self.add) + len(self.update) + len(self.remove)

    @property
    def invalid_paths(self) -> list[str]:
        return sorted({p.path for p in self.problems})

    def describe(self) -> str:
        """The plan for humans, one line per change, then the problems and the guard."""
        lines = [f"+ add     {j.job.name}  ({j.path}:{j.line})" for j in self.add]
        lines += [f"~ update  {j.job.name}  ({j.path}:{j.line})" for j in self.update]
        lines += [f"- remove  {name}" for name in self.remove]
        lines.append(
            f"{len(self.add)} to add, {len(self.update)} to update, {len(self.remove)} to remove,"
            f" {len(self.unchanged)} unchanged"
        )
        lines += [f"! {p}" for p in self.problems]
        for path, names in sorted(self.kept_last_good.items()):
            lines.append(f"! {path}: invalid, keeping last good version of {', '.join(names)}")
        lines += [f"? {path}: still being written, not read yet" for path in self.unsettled]
        if self.guard:
            lines.append(f"! guard: {self.guard}")
        return "\n".join(lines)


def compute_plan(
    current: Mapping[str, str],
    files: Mapping[str, FileState],
    *,
    folder_present: bool = True,
    guard_confirmed: bool = False,
    current_paths: Mapping[str, str] | None = None,
) -> Plan:
    """Diff the folder (`files`, by path) against the schedule (`current`: name -> digest).

    A file with problems contributes its last good jobs; without a known last good
    version (a fresh process), the jobs the schedule holds from that path
    (`current_paths`: name -> path) stay as they are. A later file defining a name an
    earlier file already took is invalid as a whole (first path wins). When the folder is
    gone or holds no job file while the schedule is not empty, nothing is removed and
    `guard` says why, unless the caller confirms the state held long enough.
    """
    plan = Plan()
    taken: dict[str, LoadedJob] = {}
    kept: set[str] = set()
    for path in sorted(files):
        _take_file(plan, files[path], taken, kept, current, current_paths or {})
    plan.desired = taken
    for name, loaded in sorted(taken.items()):
        digest = current.get(name)
        if digest is None:
            plan.add.append(loaded)
        elif digest != loaded.digest:
            plan.update.append(loaded)
        else:
            plan.unchanged.append(name)
    gone = sorted(name for name in current if name not in taken and name not in kept)
    if gone and not files and not guard_confirmed:
        plan.guard = _guard_message(folder_present, len(gone))
        kept.update(gone)
    else:
        plan.remove = gone
    plan.unchanged = sorted(set(plan.unchanged) | (kept - set(taken)))
    return plan


def _take_file(
    plan: Plan,
    state: FileState,
    taken: dict[str, LoadedJob],
    kept: set[str],
    current: Mapping[str, str],
    current_paths: Mapping[str, str],
) -> None:
    problems = list(state.problems) or _duplicates(state, taken)
    if not problems:
        plan.accepted[state.path] = list(state.jobs)
        taken.update((j.job.name, j) for j in state.jobs)
        return
    plan.problems.extend(problems)
    if state.last_good_jobs is not None:
        good = [j for j in state.last_good_jobs if j.job.name not in taken]
        taken.update((j.job.name, j) for j in good)
        names = [j.job.name for j in good]
    else:
        names = sorted(
            n
            for n, p in current_paths.items()
            if p == state.path and n in current and n not in taken
        )
        kept.update(names)
    if names:
        plan.kept_last_good[state.path] = names


def _duplicates(state: FileState, taken: Mapping[str, LoadedJob]) -> list[Problem]:
    # Same wording as loader.mark_duplicate_names, which `check` uses.
    return [
        Problem(
            j.path, j.line, 1, "name",
            f"duplicate job name '{j.job.name}': also defined at "
            f"{taken[j.job.name].path}:{taken[j.job.name].line}",
        )
        for j in state.jobs
        if j.job.name in taken
    ]  # fmt: skip


def _guard_message(folder_present: bool, count: int) -> str:
    what = "the jobs folder is gone" if folder_present is False else "the jobs folder is empty"
    return (
        f"{what}: keeping all {count} jobs instead of removing them, until that state holds"
        " for the confirmation period"
    )
