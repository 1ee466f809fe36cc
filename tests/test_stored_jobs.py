"""Validated jobs kept in the state: rebuilt exactly as validation leaves them, or not at all."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from runner.daemon.folder import FolderReconciler
from runner.jobs import stored
from runner.jobs.loader import Defaults, Limits, LoadedJob, load_file
from runner.jobs.sharing import EMPTY

EXAMPLES = Path(__file__).resolve().parent.parent / "jobs.d"

VARIED = """\
jobs:
  - name: a
    kind: workflow
    workflow: wf
    input: {when: 2026-03-29 01:30:00+01:00, day: 2026-03-29, nested: {list: [1, 2.5, null]}}
    labels: {team: ops}
    session: {tag: s, token: "${env:TOKEN}"}
    retry: {initial: 2s, max: 1m}
    schedule: {every: 15m, start_at: "2026-03-29T00:00:00", tz: Europe/Amsterdam, limit: 3}
  - name: b
    kind: quota
    tag: t
    dst: {skipped: skip, repeated: twice}
    catchup: {policy: all, window: 1h}
    schedule: {cron: '30 2 * * *', tz: Europe/Amsterdam, endDate: 2027-01-01T00:00:00Z}
  - {name: c, kind: fallback, tag: t, suspend: true, jitter: 5s, schedule: {start_at: 0}}
"""


def rebuilt(jobs: list[LoadedJob], path: str) -> list[LoadedJob]:
    form = stored.dump(jobs)
    assert form is not None
    return stored.load(form, path)


def assert_same(got: list[LoadedJob], want: list[LoadedJob]) -> None:
    assert got == want
    for a, b in zip(got, want, strict=True):
        assert type(a.job) is type(b.job)
        assert list(a.job.__dict__.items()) == list(b.job.__dict__.items())
        assert a.job.model_fields_set == b.job.model_fields_set
        assert a.job.model_dump_json(by_alias=True) == b.job.model_dump_json(by_alias=True)
        assert (a.path, a.line, a.digest) == (b.path, b.line, b.digest)


@pytest.mark.parametrize("path", sorted(EXAMPLES.iterdir()), ids=lambda p: p.name)
def test_it_rebuilds_the_example_files_jobs_exactly(path: Path) -> None:
    result = load_file(path)
    assert not result.problems
    assert_same(rebuilt(result.jobs, result.path), result.jobs)


def test_it_rebuilds_inputs_sessions_and_policies_exactly() -> None:
    result = load_file(Path("jobs.d/varied.yaml"), data=VARIED.encode())
    assert not result.problems, [str(p) for p in result.problems]
    assert_same(rebuilt(result.jobs, result.path), result.jobs)


def test_jobs_without_input_or_labels_share_one_read_only_empty_mapping() -> None:
    # Issue 12, memory per job: two empty dicts a job were 13 MB of 100,000 jobs.
    result = load_file(Path("jobs.d/varied.yaml"), data=VARIED.encode())
    a, b, c = (loaded.job for loaded in result.jobs)
    assert a.input["day"] and a.labels == {"team": "ops"}  # given ones stay their own
    assert b.input is c.input is b.labels is c.labels is EMPTY
    assert b.input == {} and b.model_dump()["input"] == {}
    with pytest.raises(TypeError, match="read-only"):
        b.input["x"] = 1
    with pytest.raises(TypeError, match="read-only"):
        b.labels.update(team="ops")
    assert EMPTY == {}
    # The stored form gives back the shared one, not an empty dict a job.
    again = rebuilt(result.jobs, result.path)
    assert again[1].job.input is again[2].job.labels is EMPTY
    assert_same(again, result.jobs)


def test_jobs_hold_their_fields_in_dicts_that_share_their_keys() -> None:
    # Issue 12, memory per job: a dict with a table of keys shared by every job of its
    # class is smaller than a dict of its own, whether validated or rebuilt.
    import sys

    result = load_file(Path("jobs.d/varied.yaml"), data=VARIED.encode())
    for jobs in (result.jobs, rebuilt(result.jobs, result.path)):
        for loaded in jobs:
            fields = loaded.job.__dict__
            assert sys.getsizeof(fields) < sys.getsizeof(dict(fields)), loaded.job.name
            assert fields == dict(fields)


def test_a_damaged_form_is_unreadable() -> None:
    result = load_file(Path("jobs.d/varied.yaml"), data=VARIED.encode())
    form = stored.dump(result.jobs)
    assert form is not None
    with pytest.raises(stored.Unreadable):
        stored.load(form[: len(form) // 2], result.path)


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("never called",))


def test_a_form_naming_other_classes_is_refused_without_calling_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    form = pickle.dumps((stored.FORMAT, [], [], [], [Boom()]))
    with pytest.raises(stored.Unreadable, match="not allowed"):
        stored.load(form, "jobs.d/x.yaml")
    assert capsys.readouterr().out == ""


def test_the_key_changes_with_the_defaults() -> None:
    assert stored.code_key(Limits(), Defaults()) == stored.code_key(Limits(), Defaults())
    assert stored.code_key(Limits(), Defaults()) != stored.code_key(Limits(), Defaults(env="p"))


def test_a_restart_rebuilds_an_unchanged_file_and_parses_a_changed_one(tmp_path: Path) -> None:
    folder = tmp_path / "jobs.d"
    folder.mkdir()
    (folder / "a.yaml").write_text(VARIED)
    (folder / "b.yaml").write_text("name: d\nkind: quota\ntag: t\nschedule: {cron: '0 * * * *'}\n")
    first = FolderReconciler(folder, quiet_s=0.0).scan({}, deep=True)
    forms = {}
    for path, jobs in first.accepted.items():
        form = stored.dump(jobs)
        assert form is not None
        forms[path] = (next(j.digest for j in jobs), form)
    (folder / "b.yaml").write_text("name: d\nkind: quota\ntag: u\nschedule: {cron: '0 * * * *'}\n")

    again = FolderReconciler(folder, quiet_s=0.0)
    a, b = str(folder / "a.yaml"), str(folder / "b.yaml")
    again.validated = {a: _content_digest(folder / "a.yaml"), b: "digest of the old content"}
    read: list[str] = []

    def read_form(path: str, digest: str) -> bytes:
        read.append(path)
        return forms[path][1]

    again.read_validated = read_form
    plan = again.scan({}, deep=True)
    assert read == [a]  # a changed file's form is not even read
    assert_same(plan.accepted[a], first.accepted[a])
    assert [j.job.tag for j in plan.accepted[b]] == ["u"]  # type: ignore[union-attr]
    assert again.validated == {}  # handed over once, not held


def _content_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jobs_at_the_same_line_of_different_files_share_its_int() -> None:
    # Issue 12, memory per job: a line above 256 was an int of each job's own.
    text = "jobs:\n" + "".join(f"  - {{name: j{i}, kind: quota, tag: t}}\n" for i in range(300))
    one = load_file(Path("jobs.d/one.yaml"), data=text.encode()).jobs
    two = load_file(Path("jobs.d/two.yaml"), data=text.encode()).jobs
    assert one[-1].line == 301 and one[-1].line is two[-1].line
    assert rebuilt(one, one[-1].path)[-1].line is two[-1].line  # and after a restart


def test_rebuilt_jobs_share_their_int_values_as_validated_ones_do() -> None:
    # Issue 12, memory per job: pickle gave each rebuilt job a `timeout` int of its own
    # (36 B a job), where validation leaves every job the default's one object.
    text = "jobs:\n" + "".join(
        f"  - {{name: j{i}, kind: quota, tag: t{', timeout: 90s' if i % 2 else ''}}}\n"
        for i in range(4)
    )
    jobs = load_file(Path("jobs.d/one.yaml"), data=text.encode()).jobs
    again = rebuilt(jobs, jobs[0].path) + rebuilt(jobs, "jobs.d/two.yaml")
    defaults = [loaded.job.timeout for loaded in again if loaded.job.timeout == 30_000]
    given = [loaded.job.timeout for loaded in again if loaded.job.timeout == 90_000]
    assert len(defaults) == len(given) == 4
    assert all(t is defaults[0] for t in defaults) and all(t is given[0] for t in given)
    assert_same(again[:4], jobs)


def test_the_state_gives_back_the_loaded_jobs_own_name_and_hash_strings(tmp_path: Path) -> None:
    # Issue 12, memory per job: the row's copies, replaced by the jobs' own afterwards,
    # were freed among what stays (17 MB of holes after a 100,000-job restart).
    from runner.store import JobRecord
    from runner.store.sqlite import SqliteStore

    name, digest = "".join(["j", "ob"]), "ab" * 32  # built, so not interned constants
    store = SqliteStore(tmp_path / "state.sqlite3")
    store.save_job(JobRecord(name, digest, "s", 1, succeeded_hash=digest))
    store.close()
    store = SqliteStore(tmp_path / "state.sqlite3")
    plain = store.load_jobs()["job"]
    assert plain.name == name and plain.name is not name
    record = store.load_jobs({name: name, digest: digest})["job"]
    assert record.name is name and record.definition_hash is digest
    assert record.succeeded_hash is digest
    store.close()
