"""The folder watcher end to end: a real temp folder, real watchfiles events, a real scheduler.

Every wait polls the scheduler every 20 ms with a timeout; the quiet period is short.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.daemon.reconcile import Plan
from runner.daemon.scheduler import RunControl, Scheduler
from runner.daemon.watch import (
    FolderReconciler,
    FolderSync,
    FolderWatcher,
    Reason,
    discover_names,
    plan_folder,
    watch_targets,
)
from runner.jobs.loader import discover
from runner.jobs.model import Job
from runner.store import Occurrence
from runner.store.sqlite import SqliteStore
from runner.timing.clock import FakeClock, SystemClock

QUIET = 0.1


def job(tag: str = "t", every: str = "1h") -> str:
    return f"kind: quota\ntag: {tag}\nschedule: {{every: {every}}}\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def save_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.replace(path)


async def ex(job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl) -> None:
    occ.state = "succeeded"


async def eventually(check: Callable[[], bool], within: float = 3.0) -> float:
    """Seconds until `check()` held; fails after `within` seconds."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Rig:
    folder: Path
    scheduler: Scheduler
    sync: FolderSync

    def tags(self) -> dict[str, str]:
        return {n: getattr(e.job, "tag", "") for n, e in self.scheduler.entries.items()}

    @property
    def plan(self) -> Plan:
        assert self.sync.reconciler.last_plan is not None
        return self.sync.reconciler.last_plan


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    """Start a real scheduler and a FolderSync on `folder`; stop both afterwards."""
    started: list[tuple[Rig, asyncio.Task[None], SqliteStore]] = []

    def make(folder: Path, confirm_s: float = 300.0, **kw: float) -> Rig:
        store = SqliteStore(tmp_path / "s.sqlite3")
        scheduler = Scheduler(store, ex, SystemClock())
        scheduler.start({})
        reconciler = FolderReconciler(folder, quiet_s=QUIET, confirm_s=confirm_s)
        sync = FolderSync(reconciler, scheduler, debounce_ms=20, **kw)
        rig = Rig(folder, scheduler, sync)
        started.append((rig, asyncio.create_task(sync.run()), store))
        return rig

    yield make
    for rig, task, store in started:
        rig.sync.stop()
        await asyncio.wait_for(task, 5)
        store.close()


async def test_it_follows_create_edit_and_delete_within_a_second(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "keep.yaml", job())
    rig = make_rig(folder)
    await eventually(lambda: "keep" in rig.scheduler.entries)

    write(folder / "a.yaml", job("one"))
    assert await eventually(lambda: rig.tags().get("a") == "one") < 1.0
    write(folder / "a.yaml", job("two"))
    assert await eventually(lambda: rig.tags().get("a") == "two") < 1.0
    (folder / "a.yaml").unlink()
    assert await eventually(lambda: "a" not in rig.scheduler.entries) < 1.0
    assert set(rig.scheduler.entries) == {"keep"}


async def test_it_applies_an_atomic_rename_save(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("one"))
    rig = make_rig(folder)
    await eventually(lambda: rig.tags().get("a") == "one")
    save_atomically(folder / "a.yaml", job("two"))
    assert await eventually(lambda: rig.tags().get("a") == "two") < 1.0


async def test_it_keeps_last_good_version_when_file_breaks(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("good"))
    rig = make_rig(folder)
    await eventually(lambda: rig.tags().get("a") == "good")
    write(folder / "a.yaml", job("bad", every="banana"))
    await eventually(lambda: rig.plan.invalid_paths == [str(folder / "a.yaml")])
    assert rig.tags() == {"a": "good"}
    assert rig.plan.kept_last_good == {str(folder / "a.yaml"): ["a"]}
    assert "schedule.every" in str(rig.plan.problems[0])
    write(folder / "a.yaml", job("fixed"))
    await eventually(lambda: rig.tags().get("a") == "fixed")
    assert rig.plan.problems == []


async def test_it_follows_a_configmap_data_swap(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "cm"
    write(folder / "..2026_01" / "a.yaml", job("v1"))
    write(folder / "..2026_01" / "b.yaml", job("v1"))
    (folder / "..data").symlink_to("..2026_01")
    for name in ("a.yaml", "b.yaml"):
        (folder / name).symlink_to(f"..data/{name}")
    rig = make_rig(folder)
    await eventually(lambda: rig.tags() == {"a": "v1", "b": "v1"})

    # kubelet: write the new revision, point a temp link at it, rename it over ..data.
    write(folder / "..2026_02" / "a.yaml", job("v2"))
    write(folder / "..2026_02" / "b.yaml", job("v1"))
    (folder / "..data_tmp").symlink_to("..2026_02")
    (folder / "..data_tmp").replace(folder / "..data")
    shutil.rmtree(folder / "..2026_01")
    assert await eventually(lambda: rig.tags() == {"a": "v2", "b": "v1"}) < 1.0


async def test_it_follows_a_git_sync_symlink_swap_again_and_again(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    write(tmp_path / "rev-1" / "a.yaml", job("r1"))
    (tmp_path / "current").symlink_to("rev-1")
    rig = make_rig(tmp_path / "current")
    await eventually(lambda: rig.tags() == {"a": "r1"})
    for rev in ("rev-2", "rev-3"):
        write(tmp_path / rev / "a.yaml", job(rev))
        write(tmp_path / rev / "extra.yaml", job(rev))
        (tmp_path / "next").symlink_to(rev)
        (tmp_path / "next").replace(tmp_path / "current")
        assert await eventually(lambda r=rev: rig.tags() == {"a": r, "extra": r}) < 1.0  # type: ignore[misc]
    # The watch followed the swap: an edit inside the new revision is seen too.
    write(tmp_path / "rev-3" / "a.yaml", job("edited"))
    assert await eventually(lambda: rig.tags().get("a") == "edited") < 1.0
    assert str(tmp_path / "current" / "a.yaml") == rig.scheduler.entries["a"].loaded.path


async def test_a_vanished_folder_keeps_its_jobs_until_confirmed(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("one"))
    rig = make_rig(folder, confirm_s=0.6)
    await eventually(lambda: "a" in rig.scheduler.entries)

    shutil.rmtree(folder)
    await eventually(lambda: rig.plan.guard is not None)
    assert "gone" in (rig.plan.guard or "")
    assert set(rig.scheduler.entries) == {"a"}
    await eventually(lambda: not rig.scheduler.entries)  # the state held for confirm_s

    write(folder / "b.yaml", job("back"))  # recreated: the re-armed watch sees it
    assert await eventually(lambda: rig.tags() == {"b": "back"}) < 1.0
    write(folder / "b.yaml", job("again"))
    assert await eventually(lambda: rig.tags() == {"b": "again"}) < 1.0


async def test_a_recreated_folder_within_the_period_loses_nothing(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("one"))
    write(folder / "b.yaml", job("one"))
    rig = make_rig(folder)
    await eventually(lambda: rig.tags() == {"a": "one", "b": "one"})
    shutil.rmtree(folder)
    await eventually(lambda: rig.plan.guard is not None)
    write(folder / "a.yaml", job("one"))
    await eventually(lambda: rig.plan.guard is None)
    # b.yaml did not come back: only now, with a non-empty folder, is it removed.
    assert rig.tags() == {"a": "one"}


async def test_polling_mode_sees_changes(tmp_path: Path, make_rig: Callable[..., Rig]) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("one"))
    rig = make_rig(folder, poll_interval_s=0.05)
    await eventually(lambda: rig.tags() == {"a": "one"})
    write(folder / "a.yaml", job("two"))
    assert await eventually(lambda: rig.tags() == {"a": "two"}) < 1.0


async def test_it_resyncs_periodically_without_events(tmp_path: Path) -> None:
    reasons: list[Reason] = []

    async def on_change(reason: Reason) -> float | None:
        reasons.append(reason)
        return None

    tmp_path.joinpath("jobs.d").mkdir()
    watcher = FolderWatcher(tmp_path / "jobs.d", on_change, resync_s=0.1)
    task = asyncio.create_task(watcher.run())
    await eventually(lambda: reasons.count("resync") >= 2)
    watcher.stop()
    await asyncio.wait_for(task, 5)
    assert reasons[0] == "start"


# ---- the scan itself, without a watcher -------------------------------------------------


def test_a_file_still_being_written_is_not_read_yet(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", job("one"))
    reconciler = FolderReconciler(tmp_path, quiet_s=0.0)
    assert [j.job.name for j in reconciler.scan({}).add] == ["a"]
    write(tmp_path / "a.yaml", "name: a\nkind: quota\n")  # cut short, and younger than quiet_s
    write(tmp_path / "new.yaml", job("new"))
    reconciler.quiet_s = 60.0
    plan = reconciler.scan({"a": reconciler.files[str(tmp_path / "a.yaml")].jobs[0].digest})
    assert sorted(plan.unsettled) == [str(tmp_path / "a.yaml"), str(tmp_path / "new.yaml")]
    assert plan.changes == 0 and plan.unchanged == ["a"] and plan.problems == []
    assert reconciler.next_check_s() == 60.0


def test_only_changed_files_are_parsed_again(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", job("one"))
    write(tmp_path / "b.yaml", job("one"))
    reconciler = FolderReconciler(tmp_path, quiet_s=0.0)
    reconciler.scan({})
    before = dict(reconciler.files)
    write(tmp_path / "b.yaml", job("two"))
    reconciler.scan({}, deep=True)
    assert reconciler.files[str(tmp_path / "a.yaml")] is before[str(tmp_path / "a.yaml")]
    assert reconciler.files[str(tmp_path / "b.yaml")] is not before[str(tmp_path / "b.yaml")]


def test_a_rescan_that_finds_nothing_changed_plans_with_no_work_per_job(tmp_path: Path) -> None:
    # Issue 12, item 3: a periodic resync of 100,000 unchanged jobs planned in full held
    # the loop (and the GIL) for about 0.3 s.
    write(tmp_path / "a.yaml", job("one"))
    write(tmp_path / "b.yaml", job("one"))
    reconciler = FolderReconciler(tmp_path, quiet_s=0.0)
    first = reconciler.scan({})
    assert [j.job.name for j in first.add] == ["a", "b"]
    # Applied (the caller vouches): nothing to change, all unchanged.
    settled = reconciler.unchanged(reconciler.read())
    assert settled is not None and settled.changes == 0
    assert sorted(settled.unchanged) == ["a", "b"] and settled.desired == {}
    # What the applied plan keeps: not the jobs it added, which the schedule holds.
    assert reconciler.last_plan is not None and reconciler.last_plan.add == []
    assert reconciler.last_plan.desired == {}
    again = reconciler.unchanged(reconciler.read(deep=True))  # content read, not changed
    assert again is not None and again.changes == 0
    assert again.unchanged is settled.unchanged
    current = {j.job.name: j.digest for j in first.add}

    write(tmp_path / "b.yaml", job("two"))  # a file changed: plan in full
    assert reconciler.unchanged(reconciler.read()) is None
    reconciler.plan(reconciler.read(), current)
    (tmp_path / "c.yaml").write_text("name: c\nkind: nonsense\n")  # an invalid file
    assert reconciler.unchanged(reconciler.read()) is None
    plan = reconciler.plan(reconciler.read(), current)
    assert plan.problems and reconciler.unchanged(reconciler.read()) is None  # still invalid


async def test_a_resync_plans_in_full_after_the_schedule_changed_elsewhere(
    tmp_path: Path, make_rig: Callable[..., Rig]
) -> None:
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job("one"))
    rig = make_rig(folder)
    await eventually(lambda: rig.tags().get("a") == "one")
    settled = await rig.sync.reload("resync")
    assert settled.changes == 0
    quiet = await rig.sync.reload("resync")
    assert quiet.unchanged is settled.unchanged  # nothing changed: no plan per job
    rig.scheduler.remove("a")  # not by a plan: the next one must see it
    restored = await rig.sync.reload("resync")
    assert [j.job.name for j in restored.add] == ["a"] and "a" in rig.scheduler.entries


async def test_the_guard_confirms_only_after_the_state_held_for_the_period(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    write(tmp_path / "jobs.d" / "a.yaml", job())
    reconciler = FolderReconciler(tmp_path / "jobs.d", clock=clock, quiet_s=0.0, confirm_s=300)
    current = {j.job.name: j.digest for j in reconciler.scan({}).add}
    shutil.rmtree(tmp_path / "jobs.d")
    assert reconciler.scan(current).guard is not None
    await clock.advance(299)
    assert reconciler.scan(current).remove == []
    assert reconciler.next_check_s() == pytest.approx(1.01)
    await clock.advance(1)
    plan = reconciler.scan(current)
    assert plan.guard is None and plan.remove == ["a"]


async def test_the_guard_period_restarts_when_files_come_back(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    folder = tmp_path / "jobs.d"
    write(folder / "a.yaml", job())
    reconciler = FolderReconciler(folder, clock=clock, quiet_s=0.0, confirm_s=300)
    current = {j.job.name: j.digest for j in reconciler.scan({}).add}
    (folder / "a.yaml").unlink()
    reconciler.scan(current)
    await clock.advance(200)
    write(folder / "a.yaml", job())
    assert reconciler.scan(current).guard is None
    (folder / "a.yaml").unlink()
    await clock.advance(200)
    assert reconciler.scan(current).guard is not None  # 200 s, not 400 s: held anew


def test_plan_folder_changes_nothing_and_keeps_jobs_of_a_broken_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", job("bad", every="banana"))
    write(tmp_path / "b.yaml", job("new"))
    current = {"a": "d1", "gone": "d2"}
    paths = {"a": str(tmp_path / "a.yaml"), "gone": str(tmp_path / "gone.yaml")}
    plan = plan_folder(tmp_path, current=current, current_paths=paths)
    assert ([j.job.name for j in plan.add], plan.remove, plan.unchanged) == (["b"], ["gone"], ["a"])
    assert "keeping last good version of a" in plan.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]


def test_watch_targets_include_the_directories_holding_symlinks(tmp_path: Path) -> None:
    (tmp_path / "rev-1").mkdir()
    (tmp_path / "current").symlink_to("rev-1")
    targets = watch_targets(tmp_path / "current")
    real = tmp_path.resolve()
    assert targets.folder == str(real / "rev-1")
    assert targets.side == (str(real),)
    assert targets.names == {str(real / "rev-1"), str(real / "current")}
    missing = watch_targets(tmp_path / "no" / "such")
    assert (missing.folder, missing.side) == (None, (str(real),))
    assert missing.names == {str(real / "no")}


def test_discovery_orders_like_paths_and_skips_litter_and_loops(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.toml", "sub/x.yml", "sub/deeper/y.yaml", "a-b/z.yaml", "a/z.yaml"):
        write(tmp_path / name, job())
    for name in (".hidden/h.yaml", "notes.txt", ".dot.yaml", "x.yaml~", "#x.yaml#"):
        write(tmp_path / name, job())
    (tmp_path / "loop").symlink_to(tmp_path)
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    expected = [
        "a/z.yaml",
        "a-b/z.yaml",
        "a.toml",
        "b.yaml",
        "dangling.yaml",
        "sub/deeper/y.yaml",
        "sub/x.yml",
    ]
    assert discover_names(str(tmp_path)) == [str(tmp_path / e) for e in expected]
    assert discover(tmp_path) == [tmp_path / e for e in expected]


def test_a_dangling_symlink_is_an_invalid_file_not_a_retry(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").symlink_to(tmp_path / "nowhere.yaml")
    reconciler = FolderReconciler(tmp_path, quiet_s=0.0)
    plan = reconciler.scan({})
    assert plan.unsettled == [] and reconciler.next_check_s() is None
    assert "cannot open file" in str(plan.problems[0])
