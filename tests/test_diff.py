"""`ductape-runner diff` on real Git repositories: what a reviewer of a schedule change sees.

The repository (tests/diff_helpers.py) has two commits: a 60x frequency increase, a zone
change across Europe's spring-forward, a renamed and a moved job, a removed one, a past
one-shot, and a file that turns invalid. `--now` pins the clock.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.diff_helpers import AFTER, BEFORE, QUOTA, git, make_repo, run_diff

ROOT = Path(__file__).resolve().parent.parent
REVS = ("main~1:jobs.d", "main:jobs.d")
VALID = {"jobs.d/sync.yaml": BEFORE["jobs.d/sync.yaml"]}  # a third commit mends sync.yaml


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"), BEFORE, AFTER)


@pytest.fixture(scope="module")
def as_json(repo: Path) -> dict[str, Any]:
    proc = run_diff(repo, *REVS, "--format", "json")
    assert proc.returncode == 1, proc.stderr  # sync.yaml is invalid in NEW
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def job(data: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [j for j in data["jobs"] if j["name"] == name]
    return found


def test_json_sorts_every_job_into_added_removed_renamed_and_changed(
    as_json: dict[str, Any],
) -> None:
    statuses = {j["name"]: j["status"] for j in as_json["jobs"]}
    assert statuses == {
        "audit": "renamed",
        "backup": "changed",
        "kickoff": "added",
        "legacy": "removed",
        "report": "changed",
        "tidy": "renamed",
    }
    assert as_json["summary"] == {
        "added": 1, "removed": 1, "renamed": 2, "changed": 2, "unchanged": 1,
    }  # fmt: skip
    assert as_json["valid"] is False and as_json["now"] == "2026-03-27T12:00:00Z"


def test_json_says_what_a_rename_and_a_move_mean_for_the_daemon(as_json: dict[str, Any]) -> None:
    tidy, audit = job(as_json, "tidy"), job(as_json, "audit")
    assert (tidy["old_name"], tidy["old_path"]) == ("cleanup", "jobs.d/cleanup.yaml")
    assert "new job" in tidy["note"]
    assert (audit["old_name"], audit["path"]) == (None, "jobs.d/ops/audit.yaml")
    assert "keeps its state" in audit["note"]


def test_json_shows_a_60x_increase_with_both_versions_fire_times(as_json: dict[str, Any]) -> None:
    report = job(as_json, "report")
    assert report["fields"] == [
        {"field": "schedule.cron", "old": "0 */1 * * *", "new": "*/1 * * * *"}
    ]
    assert [f["utc"] for f in report["fires"]] == [
        "2026-03-27T12:01:00Z", "2026-03-27T12:02:00Z", "2026-03-27T12:03:00Z",
    ]  # fmt: skip
    assert [f["local"] for f in report["old_fires"]] == [
        "2026-03-27T14:00:00+01:00", "2026-03-27T15:00:00+01:00", "2026-03-27T16:00:00+01:00",
    ]  # fmt: skip
    [frequency] = [c for c in as_json["consequences"] if c["job"] == "report"]
    assert (frequency["id"], frequency["ratio"]) == ("frequency-up-10x", 60.0)


def test_json_marks_the_dst_transition_inside_the_window(as_json: dict[str, Any]) -> None:
    backup = job(as_json, "backup")
    assert backup["fields"] == [
        {"field": "schedule.tz", "old": "Europe/Amsterdam", "new": "America/New_York"}
    ]
    assert (backup["zone"], backup["old_zone"]) == ("America/New_York", "Europe/Amsterdam")
    assert [f["dst"] for f in backup["old_fires"]] == [None, "+01:00 -> +02:00", None]
    assert backup["old_fires"][1]["local"] == "2026-03-29T09:00:00+02:00"
    assert backup["fires"][0]["utc"] == "2026-03-27T13:00:00Z"  # 09:00 in New York
    assert backup["consequences"] == ["zone-change"]


def test_json_locates_the_invalid_file_and_keeps_its_previous_job(as_json: dict[str, Any]) -> None:
    [problem] = as_json["problems"]
    assert problem["path"] == "jobs.d/sync.yaml" and problem["field"] == "schedule.cron"
    assert (problem["line"], problem["column"]) == (5, 18)
    assert as_json["kept_last_good"] == {"jobs.d/sync.yaml": ["sync"]}
    ids = [(c["id"], c["job"] or c["path"]) for c in as_json["consequences"]]
    assert ids == [
        ("invalid-file", "jobs.d/sync.yaml"),
        ("zone-change", "backup"),
        ("one-shot-past", "kickoff"),
        ("frequency-up-10x", "report"),
    ]


def test_text_shows_fields_fire_times_side_by_side_and_consequences(repo: Path) -> None:
    proc = run_diff(repo, *REVS)
    assert proc.returncode == 1
    out = proc.stdout
    assert out.startswith("diff main~1:jobs.d -> main:jobs.d: next 3 fire times after")
    assert (
        '~ changed  report  jobs.d/report.yaml:1\n    schedule.cron: "0 */1 * * *" -> "*/1 * * * *"'
        in out
    )
    assert "! frequency-up-10x: report: fires 60x as often: every 1m instead of every 1h" in out
    assert re.search(
        r"2026-03-28 09:00:00 EDT \(-0400\)  2026-03-28T13:00:00Z +\| "
        r"2026-03-29 09:00:00 CEST \(\+0200\)  2026-03-29T07:00:00Z  \[DST \+01:00 -> \+02:00\]",
        out,
    )
    assert "> renamed  tidy  jobs.d/tidy.yaml:1  (was cleanup in jobs.d/cleanup.yaml)" in out
    assert "- removed  legacy  jobs.d/legacy.yaml:1" in out
    assert "  jobs.d/sync.yaml:5:18: schedule.cron: bad minute field '61' (allowed 0-59)" in out
    assert "1 added, 1 removed, 2 renamed, 2 changed, 1 unchanged; 1 invalid file" in out


def test_markdown_has_a_collapsible_section_per_job_and_a_consequence_table(repo: Path) -> None:
    proc = run_diff(repo, *REVS, "--format", "markdown")
    assert proc.returncode == 1
    out = proc.stdout
    assert out.count("<details><summary>") == out.count("</details>") == 6
    assert (
        "<details><summary>~ <b>report</b> changed &middot; <code>frequency-up-10x</code>"
        "</summary>" in out
    )
    assert (
        '| <code>schedule.cron</code> | <code>"0 */1 * * *"</code> | <code>"*/1 * * * *"</code> |'
        in out
    )
    assert "| 2 | 2026-03-28 09:00:00 EDT (-0400) | 2026-03-28T13:00:00Z | " in out
    assert "<b>DST +01:00 -&gt; +02:00</b>" in out
    assert "| &#x26D4; | <code>invalid-file</code> | <code>jobs.d/sync.yaml</code> |" in out
    assert "- <code>jobs.d/sync.yaml:5:18: schedule.cron: bad minute field" in out


def test_the_readme_shows_this_markdown_as_a_run_prints_it(repo: Path) -> None:
    proc = run_diff(repo, *REVS, "--format", "markdown")
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- diff-example -->\n", 2)[1]
    assert shown.strip() == proc.stdout.strip(), "paste this output into README.md"


def test_exit_codes_valid_blocked_invalid_and_usage(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", BEFORE, AFTER, VALID)
    first, broken, mended = "main~2:jobs.d", "main~1:jobs.d", "main:jobs.d"
    assert run_diff(repo, first, mended).returncode == 0
    assert run_diff(repo, broken, mended).returncode == 0
    blocked = run_diff(repo, first, mended, "--fail-on", "frequency-up-10x")
    assert blocked.returncode == 3
    assert "blocked by --fail-on: frequency-up-10x" in blocked.stdout
    # a threshold names that ratio or more: 60x passes a 100x rule and fails a 2x one
    assert run_diff(repo, first, mended, "--fail-on=frequency-up-100x").returncode == 0
    both = run_diff(repo, first, mended, "--fail-on", "zone-change,frequency-up-2x")
    assert both.returncode == 3
    assert run_diff(repo, first, broken, "--fail-on", "zone-change").returncode == 1
    typo = run_diff(repo, first, mended, "--fail-on", "frequency-up")
    assert typo.returncode == 2 and "unknown consequence frequency-up" in typo.stderr
    unknown = run_diff(repo, "nope:jobs.d", mended)
    assert unknown.returncode == 2 and "unknown revision 'nope'" in unknown.stderr
    assert run_diff(repo, "jobs.d-typo", mended).returncode == 2


def test_a_folder_on_disk_compares_with_a_revision_path_by_path(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", BEFORE)
    (repo / "jobs.d/report.yaml").write_text(AFTER["jobs.d/report.yaml"] or "")
    for new in ("jobs.d", str(repo / "jobs.d")):
        data = json.loads(run_diff(repo, "HEAD:jobs.d", new, "--format", "json").stdout)
        assert [(j["name"], j["status"]) for j in data["jobs"]] == [("report", "changed")]
        assert data["summary"]["unchanged"] == 5


def test_a_folder_missing_at_the_old_revision_compares_as_empty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"README": "x\n"}, {"jobs.d/a.yaml": QUOTA + "tag: a\n"})
    proc = run_diff(repo, "main~1:jobs.d", "main:jobs.d", "--format", "json")
    data = json.loads(proc.stdout)
    assert data["notes"] == ["main~1:jobs.d: no such folder at that revision: compared as empty"]
    assert data["summary"]["added"] == 1


def test_dot_folders_symlinks_and_other_files_are_not_read(tmp_path: Path) -> None:
    files: dict[str, str | None] = {
        "jobs.d/a.yaml": QUOTA + "tag: a\nschedule: {cron: '0 * * * *'}\n",
        "jobs.d/..data/b.yaml": "not: [valid",
        "jobs.d/.c.yaml": "not: [valid",
        "jobs.d/notes.txt": "not a job",
    }
    repo = make_repo(tmp_path / "r", files)
    (repo / "jobs.d/link.yaml").symlink_to("a.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a link")
    data = json.loads(run_diff(repo, "main~1:jobs.d", "jobs.d", "--format", "json").stdout)
    assert [j["name"] for j in data["jobs"]] == ["link"]  # the folder scan follows links
    data = json.loads(run_diff(repo, "main~1:jobs.d", "main:jobs.d", "--format", "json").stdout)
    assert data["jobs"] == [] and data["summary"]["unchanged"] == 1 and data["valid"]


def test_duplicate_names_across_files_refuse_the_later_file(tmp_path: Path) -> None:
    twin = {"jobs.d/z.yaml": QUOTA + "name: report\ntag: other\n"}
    repo = make_repo(tmp_path / "r", BEFORE, twin)
    proc = run_diff(repo, "main~1:jobs.d", "main:jobs.d", "--format", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    ids = {(c["id"], c["path"]) for c in data["consequences"]}
    assert ids == {("invalid-file", "jobs.d/z.yaml"), ("duplicate-name", "jobs.d/z.yaml")}
    assert "also defined at jobs.d/report.yaml:1" in data["problems"][0]["message"]


def test_secret_references_stay_references_and_literal_secrets_are_hidden(tmp_path: Path) -> None:
    old = QUOTA + "tag: t\ninput: {key: '${env:OLD_KEY}', password: hunter2}\n"
    new = QUOTA + "tag: t\ninput: {key: '${credential:NEW_KEY}', password: hunter3}\n"
    repo = make_repo(tmp_path / "r", {"jobs.d/t.yaml": old}, {"jobs.d/t.yaml": new})
    proc = run_diff(repo, "main~1:jobs.d", "main:jobs.d")
    assert 'input.key: "${env:OLD_KEY}" -> "${credential:NEW_KEY}"' in proc.stdout
    assert "hunter" not in proc.stdout


def test_markdown_escapes_what_files_say(tmp_path: Path) -> None:
    name = "jobs.d/a|b<i>.yaml"
    repo = make_repo(
        tmp_path / "r", {"README": "x\n"}, {name: "kind: quota\ntag: '<b>|'\nname: a\n"}
    )
    out = run_diff(repo, "main~1:jobs.d", "main:jobs.d", "--format", "markdown").stdout
    assert "<code>jobs.d/a&#124;b&lt;i&gt;.yaml:1</code>" in out
    assert "<i>" not in out


def test_a_file_invalid_at_the_old_revision_is_named_as_that_revision_has_it(
    tmp_path: Path,
) -> None:
    broken = {"jobs.d/j.yaml": QUOTA + "tag: t\ncolour: red\n"}
    repo = make_repo(tmp_path / "r", broken, {"jobs.d/j.yaml": QUOTA + "tag: t\n"})
    data = json.loads(run_diff(repo, "main~1:jobs.d", "jobs.d", "--format", "json").stdout)
    assert data["notes"] == [
        "jobs.d/j.yaml is invalid in main~1:jobs.d: its jobs count as absent there"
        " (the daemon may still run an earlier version of them)"
    ]
    assert [j["status"] for j in data["jobs"]] == ["added"] and data["valid"]
