"""The reconciliation diff as tables: folder states against the schedule's digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.daemon.reconcile import FileState, Plan, compute_plan
from runner.jobs.loader import LoadedJob, load_file


def jobs(path: str, *names: str, tag: str = "t") -> list[LoadedJob]:
    text = "".join(
        f"---\nname: {n}\nkind: quota\ntag: {tag}\nschedule: {{every: 1h}}\n" for n in names
    )
    result = load_file(Path(path), data=text.encode())
    assert not result.problems, [str(p) for p in result.problems]
    return result.jobs


def good(path: str, *names: str, tag: str = "t") -> FileState:
    loaded = jobs(path, *names, tag=tag)
    return FileState(path, f"h-{path}-{tag}", loaded, [], last_good_jobs=loaded)


def broken(path: str, last_good: list[LoadedJob] | None = None) -> FileState:
    result = load_file(Path(path), data=b"name: x\nkind: quota\nschedule: {cron: '61 * * * *'}\n")
    assert result.problems
    return FileState(path, "h-broken", [], result.problems, last_good)


def digests(*states: FileState) -> dict[str, str]:
    return {j.job.name: j.digest for s in states for j in s.jobs}


def summary(plan: Plan) -> tuple[list[str], list[str], list[str], list[str]]:
    return (
        [j.job.name for j in plan.add],
        [j.job.name for j in plan.update],
        plan.remove,
        plan.unchanged,
    )


A, B = good("d/a.yaml", "a1", "a2"), good("d/b.yaml", "b1")
A_EDITED = good("d/a.yaml", "a1", "a2", tag="edited")

# (case, current schedule, folder files, expected (add, update, remove, unchanged))
CASES = [
    ("first load adds everything", {}, [A, B], (["a1", "a2", "b1"], [], [], [])),
    ("nothing changed", digests(A, B), [A, B], ([], [], [], ["a1", "a2", "b1"])),
    ("an edited file updates its jobs", digests(A, B), [A_EDITED, B], ([], ["a1", "a2"], [], ["b1"])),
    ("a deleted file removes its jobs", digests(A, B), [B], ([], [], ["a1", "a2"], ["b1"])),
    ("a job moved out of a file", digests(A, B), [good("d/a.yaml", "a1"), B], ([], [], ["a2"], ["a1", "b1"])),
    ("a new file adds its jobs", digests(B), [A, B], (["a1", "a2"], [], [], ["b1"])),
    ("a broken file keeps its last good jobs", digests(A, B), [broken("d/a.yaml", A.jobs), B], ([], [], [], ["a1", "a2", "b1"])),
    ("a broken new file adds nothing", digests(B), [broken("d/a.yaml"), B], ([], [], [], ["b1"])),
    ("a broken file with no last good loses its jobs", digests(A, B), [broken("d/a.yaml"), B], ([], [], ["a1", "a2"], ["b1"])),
]  # fmt: skip


@pytest.mark.parametrize(
    ("current", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_table(
    current: dict[str, str], files: list[FileState], expected: tuple[list[str], ...]
) -> None:
    plan = compute_plan(current, {f.path: f for f in files})
    assert summary(plan) == expected
    assert plan.guard is None


def test_it_reports_the_error_and_what_it_kept_for_a_broken_file() -> None:
    plan = compute_plan(digests(A, B), {"d/a.yaml": broken("d/a.yaml", A.jobs), "d/b.yaml": B})
    assert plan.invalid_paths == ["d/a.yaml"]
    assert "schedule.cron" in str(plan.problems[0])
    assert plan.kept_last_good == {"d/a.yaml": ["a1", "a2"]}
    assert list(plan.accepted) == ["d/b.yaml"]


def test_a_fresh_process_keeps_what_the_schedule_holds_from_a_broken_file() -> None:
    paths = {"a1": "d/a.yaml", "a2": "d/a.yaml", "b1": "d/b.yaml"}
    plan = compute_plan(
        digests(A, B), {"d/a.yaml": broken("d/a.yaml"), "d/b.yaml": B}, current_paths=paths
    )
    assert summary(plan) == ([], [], [], ["a1", "a2", "b1"])
    assert plan.kept_last_good == {"d/a.yaml": ["a1", "a2"]}


def test_the_first_path_wins_a_duplicate_name_and_the_later_file_is_invalid() -> None:
    later = FileState("d/b.yaml", "h", jobs("d/b.yaml", "a1", "b2"), [], None)  # never accepted
    plan = compute_plan({}, {"d/b.yaml": later, "d/a.yaml": A})
    assert summary(plan) == (["a1", "a2"], [], [], [])
    assert plan.desired["a1"].path == "d/a.yaml"
    assert plan.invalid_paths == ["d/b.yaml"]
    assert "duplicate job name 'a1': also defined at d/a.yaml:2" in str(plan.problems[0])
    assert list(plan.accepted) == ["d/a.yaml"]


def test_a_duplicate_keeps_the_later_files_last_good_names_that_do_not_clash() -> None:
    before = good("d/b.yaml", "b1")
    clashing = FileState("d/b.yaml", "h2", jobs("d/b.yaml", "b1", "a1"), [], before.jobs)
    plan = compute_plan(digests(A, before), {"d/a.yaml": A, "d/b.yaml": clashing})
    assert summary(plan) == ([], [], [], ["a1", "a2", "b1"])
    assert plan.kept_last_good == {"d/b.yaml": ["b1"]}


# (case, folder present, confirmed, expected removals, guard message contains)
GUARD = [
    ("folder gone: hold everything", False, False, [], "gone"),
    ("folder empty: hold everything", True, False, [], "empty"),
    ("confirmed after the period: remove", False, True, ["a1", "a2", "b1"], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("present", "confirmed", "removed", "says"), [g[1:] for g in GUARD], ids=[g[0] for g in GUARD]
)
def test_mass_deletion_guard(
    present: bool, confirmed: bool, removed: list[str], says: str | None
) -> None:
    plan = compute_plan(digests(A, B), {}, folder_present=present, guard_confirmed=confirmed)
    assert plan.remove == removed
    if says is None:
        assert plan.guard is None
    else:
        assert plan.guard is not None and says in plan.guard
        assert plan.unchanged == ["a1", "a2", "b1"]


def test_an_empty_folder_and_an_empty_schedule_need_no_guard() -> None:
    plan = compute_plan({}, {}, folder_present=False)
    assert plan.guard is None and plan.changes == 0


def test_describe_lists_changes_problems_and_the_guard() -> None:
    plan = compute_plan(
        {"gone": "x", **digests(B)}, {"d/a.yaml": A_EDITED, "d/c.yaml": broken("d/c.yaml")}
    )
    text = plan.describe()
    assert "+ add     a1  (d/a.yaml:2)" in text
    assert "- remove  gone" in text
    assert "2 to add, 0 to update, 2 to remove, 0 unchanged" in text
    assert "! d/c.yaml:3:" in text
    guarded = compute_plan(digests(B), {}, folder_present=False).describe()
    assert "! guard: the jobs folder is gone: keeping all 1 jobs" in guarded
