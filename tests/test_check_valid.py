"""Valid job files in both seed spellings load into the same canonical model."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.jobs.loader import (
    Defaults,
    Limits,
    discover,
    is_job_file_name,
    load_file,
    load_folder,
)
from runner.jobs.model import ActionJob, Job, NotificationJob, WorkflowJob
from runner.jobs.schema import render

ROOT = Path(__file__).parent.parent
JOBS_D = ROOT / "jobs.d"


NO_DEFAULTS = Defaults()


def load_one(tmp_path: Path, name: str, text: str, defaults: Defaults = NO_DEFAULTS) -> Job:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = load_file(path, defaults=defaults)
    assert not result.problems, [str(p) for p in result.problems]
    assert len(result.jobs) == 1
    return result.jobs[0].job


SEED_000 = """\
kind: action
product: my-app
env: prd
app: email-service
event: send_welcome_email
input: {userId: user_123}
retries: 3
schedule:
  cron: "0 10 * * *"
  tz: Europe/Amsterdam
  limit: 30
"""
SEED_003 = """\
type: action
product_tag: my-app
env: prd
app: email-service
event: send_welcome_email
input: {userId: user_123}
retries: 3
start_at: 0
repeat:
  cron: "0 10 * * *"
  tz: Europe/Amsterdam
  limit: 30
"""
SEED_003_TOML = """\
type = "action"
product_tag = "my-app"
env = "prd"
app = "email-service"
event = "send_welcome_email"
input = { userId = "user_123" }
retries = 3
start_at = 0
repeat = { cron = "0 10 * * *", tz = "Europe/Amsterdam", limit = 30 }
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [("welcome.yaml", SEED_000), ("welcome.yml", SEED_003), ("welcome.toml", SEED_003_TOML)],
)
def test_both_spellings_normalise_to_the_same_job(tmp_path: Path, name: str, text: str) -> None:
    job = load_one(tmp_path, name, text)
    assert job == ActionJob.model_validate(
        {
            "name": "welcome",
            "kind": "action",
            "product": "my-app",
            "env": "prd",
            "app": "email-service",
            "event": "send_welcome_email",
            "input": {"userId": "user_123"},
            "retries": 3,
            "schedule": {"cron": "0 10 * * *", "tz": "Europe/Amsterdam", "limit": 30},
        }
    )


# (file text, attribute path, expected value)
FIELD_TABLE = [
    ("kind: feature\nworkflow: w\n", "canonical_kind", "workflow"),
    ("kind: publish\nbroker: b\nevent: t\n", "canonical_kind", "event"),
    ("kind: database_action\ndatabase: d\noperation: insert\n", "canonical_kind", "database"),
    ("type: feature\nevent: digest\nrepeat: {every: 1h}\n", "workflow", "digest"),
    ("type: quota\nevent: q\nrepeat: {every: 1h}\n", "tag", "q"),
    (
        "type: database_action\nevent: insert\ndatabase: d\nrepeat: {every: 1h}\n",
        "operation",
        "insert",
    ),
    ("kind: quota\ntag: t\nschedule: {every: 90s}\n", "schedule.every", 90_000),
    ("kind: quota\ntag: t\nschedule: {every: PT15M}\n", "schedule.every", 900_000),
    ("kind: quota\ntag: t\nschedule: {every: 86400000}\n", "schedule.every", 86_400_000),
    ("kind: quota\ntag: t\nschedule: {every: 1d}\n", "schedule.every", 86_400_000),
    ("kind: quota\ntag: t\ntimeout: 2m\n", "timeout", 120_000),
    ("kind: quota\ntag: t\n", "timeout", 30_000),
    ("kind: quota\ntag: t\n", "retry.initial", 1_000),
    ("kind: quota\ntag: t\n", "retry.max", 300_000),
    ("kind: quota\ntag: t\n", "retry.multiplier", 2.0),
    ("kind: quota\ntag: t\n", "concurrency", "forbid"),
    ("kind: quota\ntag: t\n", "catchup.policy", "latest"),
    ("kind: quota\ntag: t\n", "catchup.window", 3_600_000),
    ("kind: quota\ntag: t\n", "schedule.tz", "UTC"),
    ("kind: quota\ntag: t\nschedule: {start_at: 0}\n", "schedule.start_at", None),
    (
        "kind: quota\ntag: t\nschedule: {start_at: 1736935200000}\n",
        "schedule.start_at",
        datetime(2025, 1, 15, 10, tzinfo=UTC),
    ),
    (
        "kind: quota\ntag: t\nschedule: {start_at: '2025-01-15T10:00:00', tz: America/New_York}\n",
        "schedule.start_at",
        datetime(2025, 1, 15, 15, tzinfo=UTC),
    ),
    (
        "kind: quota\ntag: t\nschedule: {start_at: 2025-01-15 10:00:00, tz: Asia/Kolkata}\n",
        "schedule.start_at",
        datetime(2025, 1, 15, 4, 30, tzinfo=UTC),
    ),
    (
        "kind: quota\ntag: t\nschedule: {every: 1h, endDate: 2025-12-31T23:59:59Z}\n",
        "schedule.end_date",
        datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    ),
    ("kind: quota\ntag: t\nsession: 'user:${env:TOKEN}'\n", "session.token", "${env:TOKEN}"),
    ("kind: quota\ntag: t\nsession: {tag: u, token: '${credential:tok}'}\n", "session.tag", "u"),
    (
        "kind: quota\ntag: t\ninput: {pw: '${file:/run/secrets/pw}'}\n",
        "input.pw",
        "${file:/run/secrets/pw}",
    ),
    ("kind: quota\ntag: t\ninput: {at: $Now()}\n", "input.at", "$Now()"),
    ("kind: quota\ntag: t\n<<: {retries: 4}\n", "retries", 4),
]


def attribute(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


@pytest.mark.parametrize(("text", "field", "expected"), FIELD_TABLE)
def test_fields_load_to_canonical_values(
    tmp_path: Path, text: str, field: str, expected: object
) -> None:
    job = load_one(tmp_path, "job.yaml", "product: p\nenv: dev\n" + text)
    assert attribute(job, field) == expected


def test_secret_references_stay_unresolved(tmp_path: Path) -> None:
    os.environ["RUNNER_TEST_SECRET"] = "s3cr3t-value"
    try:
        job = load_one(
            tmp_path, "j.yaml", "kind: quota\ntag: t\ninput: {k: '${env:RUNNER_TEST_SECRET}'}\n"
        )
    finally:
        del os.environ["RUNNER_TEST_SECRET"]
    assert "s3cr3t-value" not in job.model_dump_json()


def test_product_and_env_default_from_settings(tmp_path: Path) -> None:
    job = load_one(tmp_path, "q.yaml", "kind: quota\ntag: t\n", Defaults(product="shop", env="prd"))
    assert (job.product, job.env) == ("shop", "prd")


def test_a_file_stem_names_a_single_job(tmp_path: Path) -> None:
    job = load_one(tmp_path, "nightly-report.yaml", "kind: workflow\nworkflow: w\n")
    assert isinstance(job, WorkflowJob)
    assert job.name == "nightly-report"


def test_several_jobs_per_file_in_yaml_documents_and_jobs_lists(tmp_path: Path) -> None:
    (tmp_path / "docs.yaml").write_text(
        "name: a\nkind: quota\ntag: t\n---\nname: b\nkind: quota\ntag: t\n---\n"
    )
    (tmp_path / "list.yaml").write_text(
        "jobs:\n  - {name: c, kind: quota, tag: t}\n  - {name: d, kind: quota, tag: t}\n"
    )
    (tmp_path / "tables.toml").write_text('[[jobs]]\nname = "e"\nkind = "quota"\ntag = "t"\n')
    result = load_folder([tmp_path])
    assert not result.all_problems()
    assert sorted(result.jobs) == ["a", "b", "c", "d", "e"]
    assert result.jobs["b"].line == 5


def test_notification_job_in_seed_003_spelling(tmp_path: Path) -> None:
    job = load_one(
        tmp_path,
        "n.yaml",
        "type: notification\nproduct_tag: p\nenv: prd\nevent: order_update\nnotification: orders\n"
        "start_at: 0\nrepeat: {cron: '0 10 * * *', tz: Europe/Amsterdam, limit: 30}\n",
    )
    assert isinstance(job, NotificationJob)
    assert (job.event, job.notification, job.schedule.limit) == ("order_update", "orders", 30)


@pytest.mark.parametrize(
    ("name", "wanted"),
    [
        ("job.yaml", True), ("job.yml", True), ("job.toml", True), ("job.json", False),
        (".hidden.yaml", False), ("job.yaml~", False), ("job.yaml.swp", False),
        (".#job.yaml", False), ("4913", False), ("job.yaml.tmp", False), ("README.md", False),
    ],
)  # fmt: skip
def test_editor_litter_and_dot_files_are_ignored(name: str, wanted: bool) -> None:
    assert is_job_file_name(name) is wanted


def test_discovery_skips_dot_dirs_and_survives_symlink_loops(tmp_path: Path) -> None:
    data = tmp_path / "..2026_01_01"
    data.mkdir()
    (data / "a.yaml").write_text("kind: quota\ntag: t\n")
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")  # the Kubernetes ConfigMap layout
    sub = tmp_path / "team"
    sub.mkdir()
    (sub / "b.toml").write_text('kind = "quota"\ntag = "t"\n')
    (sub / "loop").symlink_to(tmp_path)
    assert discover(tmp_path) == [tmp_path / "a.yaml", sub / "b.toml"]


def test_the_example_folder_passes_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "check", str(JOBS_D)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_examples_cover_every_kind_and_schedule_form() -> None:
    jobs = [j.job for j in load_folder([JOBS_D]).jobs.values()]
    kinds = {j.canonical_kind for j in jobs}
    assert kinds == {
        "action",
        "workflow",
        "notification",
        "storage",
        "event",
        "database",
        "graph",
        "quota",
        "fallback",
    }
    forms = {
        "cron": any(j.schedule.cron for j in jobs),
        "every": any(j.schedule.every for j in jobs),
        "one-shot": any(not j.schedule.recurring and j.schedule.start_at for j in jobs),
        "limit": any(j.schedule.limit for j in jobs),
        "endDate": any(j.schedule.end_date for j in jobs),
        "tz": any(j.schedule.tz != "UTC" for j in jobs),
        "every 10 s": any(j.schedule.every == 10_000 for j in jobs),
    }
    assert all(forms.values()), forms
    texts = [p.read_text() for p in JOBS_D.iterdir()]
    assert any("type:" in t and "repeat:" in t for t in texts)  # seed 003 spelling, YAML
    assert any("product_tag" in t for t in texts if "[[jobs]]" in t)  # and in TOML


@pytest.mark.parametrize("path", sorted(JOBS_D.iterdir()), ids=lambda p: p.name)
def test_each_example_starts_with_its_schema_line(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    if path.suffix == ".toml":  # taplo / Even Better TOML read this directive
        assert first == "#:schema ../schemas/job.schema.json"
    else:
        assert first == "# yaml-language-server: $schema=../schemas/job.schema.json"


def test_committed_schema_matches_the_model() -> None:
    committed = (ROOT / "schemas" / "job.schema.json").read_text()
    assert committed == render(), (
        "schema drifted: run `ductape-runner schema > schemas/job.schema.json`"
    )


def test_a_valid_file_is_parsed_without_every_place_and_still_places_each_job(
    tmp_path: Path,
) -> None:
    # Issue 12 (start-up): a file is parsed first without the place of every key and
    # value; each job's line must come out as with them, in every layout.
    from runner.jobs.loader import parse_documents
    from runner.jobs.yamlsrc import load_yaml

    text = (
        "# a comment\n"
        "jobs:\n"
        "  - name: a\n"
        "    kind: quota\n"
        "    tag: t\n"
        "    schedule: {cron: '0 3 * * *', tz: UTC}\n"
        "\n"
        "  - {name: b, kind: quota, tag: t}\n"
        "  -\n"
        "    name: c\n"
        "    kind: quota\n"
        "    tag: t\n"
    )
    path = tmp_path / "list.yaml"
    path.write_text(text)
    result = load_file(path)
    assert not result.problems
    assert [(j.job.name, j.line) for j in result.jobs] == [("a", 3), ("b", 8), ("c", 10)]
    fast = parse_documents(path, text, Limits(), positions=False)
    assert [d.data for d in fast] == [d.data for d in load_yaml(text)]
    assert not fast[0].keys and len(fast[0].values) == 5  # the root, jobs and each job


def test_a_file_with_a_problem_is_placed_exactly_after_the_quick_parse(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("jobs:\n  - name: a\n    kind: quota\n    tag: t\n    tag: u\n")
    [problem] = load_file(path).problems
    assert (problem.line, problem.field) == (5, "jobs[0].tag")
    assert "first at line 4" in problem.message
    path.write_text("jobs:\n  - name: a\n    kind: quota\n    tag: t\n    retries: lots\n")
    [problem] = load_file(path).problems
    assert (problem.line, problem.column, problem.field) == (5, 14, "jobs[0].retries")
