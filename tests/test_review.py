"""The review core, pure: two job sets in, what changed and what it does out; `now` is given."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.daemon.consequences import Consequence
from runner.daemon.outlook import Progress, marked, next_fires, span
from runner.daemon.review import Review, compare
from runner.jobs.loader import FileResult, load_file

NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
QUOTA = "kind: quota\ntag: t\n"


def parsed(path: str, text: str) -> FileResult:
    return load_file(Path(path), data=text.encode())


def review(old: dict[str, str], new: dict[str, str], n: int = 3) -> Review:
    def side(files: dict[str, str]) -> list[FileResult]:
        return [parsed(p, t) for p, t in sorted(files.items())]

    return compare(side(old), side(new), NOW, n)


def ids(result: Review) -> list[str]:
    return [c.id for c in result.consequences]


def schedule(text: str) -> dict[str, str]:
    return {"d/j.yaml": QUOTA + f"schedule: {text}\n"}


# (old schedule, new schedule, the frequency consequence, if any)
FREQUENCY = [
    ("{cron: '0 */1 * * *'}", "{cron: '*/1 * * * *'}", "frequency-up-10x"),  # 60x
    ("{cron: '0 0 * * *'}", "{cron: '*/5 * * * *'}", "frequency-up-100x"),  # 288x
    ("{cron: '0 */2 * * *'}", "{cron: '0 * * * *'}", "frequency-up-2x"),
    ("{every: 1h}", "{every: 1m}", "frequency-up-10x"),
    ("{cron: '0 9 * * *'}", "{every: 12h}", "frequency-up-2x"),
    ("{cron: '*/1 * * * *'}", "{cron: '0 */1 * * *'}", None),  # less often
    ("{cron: '0 * * * *'}", "{cron: '30 * * * *'}", None),  # same rate
]


@pytest.mark.parametrize(("old", "new", "expected"), FREQUENCY)
def test_a_schedule_that_fires_far_more_often_is_a_consequence(
    old: str, new: str, expected: str | None
) -> None:
    found = [i for i in ids(review(schedule(old), schedule(new))) if i.startswith("frequency")]
    assert found == ([expected] if expected else [])


def test_a_frequency_id_also_matches_the_lower_thresholds() -> None:
    hundredfold = Consequence("frequency-up-100x", "", "j", ratio=288.0)
    assert hundredfold.matches(["frequency-up-10x"]) and hundredfold.matches(["frequency-up-2x"])
    sixtyfold = Consequence("frequency-up-10x", "", "j", ratio=60.0)
    assert not sixtyfold.matches(["frequency-up-100x"])
    assert not sixtyfold.matches(["zone-change"])


@pytest.mark.parametrize(
    ("new", "says"),
    [
        ("{cron: '0 * * * *', limit: 2}", "its limit of 2 runs ends it after 2026-03-27T14:00:00Z"),
        (
            "{cron: '0 * * * *', endDate: '2026-03-27T13:30:00Z'}",
            "its endDate 2026-03-27T13:30:00Z ends it after 2026-03-27T13:00:00Z",
        ),
        ("{cron: '0 * * * *', endDate: '2026-03-01T00:00:00Z'}", "before its next fire"),
    ],
)
def test_a_limit_or_end_date_inside_the_window_is_a_consequence(new: str, says: str) -> None:
    result = review(schedule("{cron: '0 * * * *'}"), schedule(new))
    [ends] = [c for c in result.consequences if c.id == "ends-in-window"]
    assert says in ends.message


def test_a_limit_beyond_the_window_is_not_a_consequence() -> None:
    result = review(schedule("{cron: '0 * * * *'}"), schedule("{cron: '0 * * * *', limit: 4}"))
    assert ids(result) == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{start_at: '2026-03-01T00:00:00Z'}", "is past: it runs at once on deploy"),
        ("{}", "without start_at: it runs at once on deploy"),
    ],
)
def test_a_one_shot_that_would_run_at_once_is_a_consequence(text: str, says: str) -> None:
    result = review({}, schedule(text))
    [once] = result.consequences
    assert once.id == "one-shot-past" and says in once.message
    assert [f.utc for f in result.jobs[0].fires] != []


def test_a_future_one_shot_and_a_suspended_job_have_no_consequence() -> None:
    future = review({}, schedule("{start_at: '2026-04-01T00:00:00Z'}"))
    assert ids(future) == []
    suspended = review({}, {"d/j.yaml": QUOTA + "suspend: true\nschedule: {start_at: 0}\n"})
    assert ids(suspended) == [] and suspended.jobs[0].fires == []


def test_a_zone_change_is_a_consequence_and_both_zones_are_kept() -> None:
    old = schedule("{cron: '0 9 * * *', tz: Europe/Amsterdam}")
    new = schedule("{cron: '0 9 * * *', tz: Asia/Tokyo}")
    result = review(old, new)
    assert ids(result) == ["zone-change"]
    [job] = result.jobs
    assert (job.zone, job.old_zone) == ("Asia/Tokyo", "Europe/Amsterdam")
    assert [f.field for f in job.fields] == ["schedule.tz"]


def test_the_dst_transition_is_marked_on_the_first_fire_after_it() -> None:
    times = next_fires(
        parsed("j.yaml", QUOTA + "schedule: {cron: '0 9 * * *'}\n").jobs[0].job, NOW, 3
    )
    fires = marked(times, "Europe/Amsterdam", NOW)
    assert [f.dst for f in fires] == [None, "+01:00 -> +02:00", None]
    assert [f"{f.local:%H:%M %Z}" for f in fires] == ["10:00 CET", "11:00 CEST", "11:00 CEST"]


def test_a_same_definition_under_another_name_is_a_rename_not_add_and_remove() -> None:
    body = QUOTA + "schedule: {cron: '0 * * * *'}\n"
    result = review({"d/a.yaml": body}, {"d/b.yaml": body})
    [job] = result.jobs
    assert (job.status, job.name, job.old_name, job.old_path) == ("renamed", "b", "a", "d/a.yaml")
    changed = review({"d/a.yaml": body}, {"d/b.yaml": body.replace("tag: t", "tag: u")})
    assert sorted(j.status for j in changed.jobs) == ["added", "removed"]


def test_a_job_moved_to_another_file_with_a_change_shows_the_file_as_a_field() -> None:
    old = {"d/a.yaml": QUOTA + "name: j\n"}
    new = {"d/b.yaml": QUOTA.replace("tag: t", "tag: u") + "name: j\n"}
    [job] = review(old, new).jobs
    assert job.status == "changed"
    assert [(f.field, f.old, f.new) for f in job.fields] == [
        ("file", "d/a.yaml", "d/b.yaml"),
        ("tag", "t", "u"),
    ]


def test_the_review_takes_the_daemons_progress_into_account() -> None:
    job = parsed("j.yaml", QUOTA + "schedule: {every: 1h, limit: 5}\n").jobs[0].job
    anchor = int(datetime(2026, 3, 27, 11, 30, tzinfo=UTC).timestamp() * 1000)
    fires = next_fires(job, NOW, 5, Progress(anchor, executed=3))
    assert [f"{t:%H:%M}" for t in fires] == ["12:30", "13:30"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(45, "45s"), (60, "1m"), (5400, "1h30m"), (90061, "1d1h"), (0, "0s")]
)
def test_span_reads_as_people_write_durations(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_the_markdown_stays_within_a_github_comment_and_says_what_it_left_out() -> None:
    from runner.cli.diffrender import Report, markdown

    def many(cron: str) -> dict[str, str]:
        jobs = "".join(f"  - {{name: j{i:03d}, kind: quota, tag: t}}\n" for i in range(300))
        return {
            "d/all.yaml": f"jobs:\n{jobs}".replace(
                "tag: t", f"tag: t, schedule: {{cron: '{cron}'}}"
            )
        }

    out = markdown(Report(review(many("0 * * * *"), many("* * * * *")), "a", "b"))
    assert len(out) < 65_536
    shown = out.count("<details>")
    assert 0 < shown < 300 and f"**{300 - shown} more jobs not shown" in out


def test_a_file_invalid_on_the_old_side_is_named() -> None:
    result = review({"d/j.yaml": QUOTA + "colour: red\n"}, {"d/j.yaml": QUOTA})
    assert result.old_invalid == ["d/j.yaml"]
    assert [j.status for j in result.jobs] == ["added"]


def test_an_edited_one_shot_runs_again_though_the_daemon_ran_the_old_one() -> None:
    from runner.daemon.reconcile import FileState, compute_plan
    from runner.daemon.review import review as explain

    once = "schedule: {start_at: '2026-03-01T00:00:00Z'}\n"
    [old] = parsed("d/o.yaml", QUOTA + once).jobs
    edited = parsed("d/o.yaml", QUOTA.replace("tag: t", "tag: u") + once)
    plan = compute_plan({"o": old.digest}, {"d/o.yaml": FileState("d/o.yaml", "", edited.jobs)})
    ran = {"o": Progress(anchor_ms=0, executed=1)}
    [job] = explain(plan, {"o": old}, NOW, 3, ran).jobs
    assert [f"{f.utc:%Y-%m-%d}" for f in job.fires] == ["2026-03-01"]
    assert [c.id for c in job.consequences] == ["one-shot-past"]
    assert "runs again at once" in job.consequences[0].message
