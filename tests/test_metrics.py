"""Metric names, labels and the scrape-time snapshot of the job set."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from runner.daemon.metrics import LATENESS_BUCKETS, Metrics

JOBS = [
    ("report", "scheduled", 1_772_355_600.0),
    ("nightly", "paused", None),
    ("b", "failed", None),
]


def families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Parse what /metrics serves, by family name."""
    parsed = text_string_to_metric_families(metrics.render().decode())
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in parsed}


def test_runs_are_counted_by_job_and_outcome() -> None:
    metrics = Metrics(lambda: [])
    metrics.run_finished("report", "action", "succeeded", 1.5)
    metrics.run_finished("report", "action", "failed", 2.0)
    metrics.run_finished("report", "action", "skipped", None)
    runs = [s for s in families(metrics)["ductape_runner_runs"] if s[0].endswith("_total")]
    assert sorted((s[1]["job"], s[1]["outcome"], s[2]) for s in runs) == [
        ("report", "failed", 1.0),
        ("report", "skipped", 1.0),
        ("report", "succeeded", 1.0),
    ]


def test_histograms_are_labelled_by_kind_only() -> None:
    metrics = Metrics(lambda: [])
    metrics.attempt("workflow", 0.2)
    metrics.run_finished("report", "workflow", "succeeded", 0.3)
    got = families(metrics)
    for name in ("ductape_runner_attempt_duration_seconds", "ductape_runner_run_duration_seconds"):
        labels = {k for _, sample_labels, _ in got[name] for k in sample_labels}
        assert labels == {"kind", "le"}, name


def test_lateness_buckets_run_from_one_millisecond_to_a_minute() -> None:
    metrics = Metrics(lambda: [])
    metrics.lateness(0.004)
    buckets = [
        (s[1]["le"], s[2])
        for s in families(metrics)["ductape_runner_fire_lateness_seconds"]
        if s[0].endswith("_bucket")
    ]
    assert (LATENESS_BUCKETS[0], LATENESS_BUCKETS[-1]) == (0.001, 60.0)
    assert buckets[0] == ("0.001", 0.0)
    assert ("0.005", 1.0) in buckets
    assert buckets[-1] == ("+Inf", 1.0)


def test_jobs_by_status_and_next_fire_are_read_at_scrape_time() -> None:
    jobs = list(JOBS)
    metrics = Metrics(lambda: jobs)
    got = families(metrics)
    by_status = {s[1]["status"]: s[2] for s in got["ductape_runner_jobs"]}
    assert by_status == {
        "scheduled": 1.0,
        "queued": 0.0,
        "running": 0.0,
        "suspended": 0.0,
        "paused": 1.0,
        "completed": 0.0,
        "failed": 1.0,
    }
    assert got["ductape_runner_next_fire_timestamp_seconds"] == [
        ("ductape_runner_next_fire_timestamp_seconds", {"job": "report"}, 1_772_355_600.0)
    ]
    jobs.append(("late", "running", 1_772_359_200.0))
    again = families(metrics)
    assert {s[1]["job"] for s in again["ductape_runner_next_fire_timestamp_seconds"]} == {
        "report",
        "late",
    }


def test_reload_sets_the_timestamp_and_the_invalid_file_count() -> None:
    metrics = Metrics(lambda: [])
    metrics.reloaded(1_772_355_600.0, 3)
    got = families(metrics)
    assert got["ductape_runner_last_reload_success_timestamp_seconds"][0][2] == 1_772_355_600.0
    assert got["ductape_runner_invalid_files"][0][2] == 3.0


def test_metrics_stay_out_of_the_global_registry() -> None:
    Metrics(lambda: [])
    Metrics(lambda: [])  # a second instance would clash if both used the global one
    names = {m.name for m in REGISTRY.collect()}
    assert not any(name.startswith("ductape_runner") for name in names)


def test_the_snapshot_is_not_called_between_scrapes() -> None:
    calls = []

    def snapshot() -> list[tuple[str, str, float | None]]:
        calls.append(1)
        return []

    metrics = Metrics(snapshot)
    metrics.run_finished("a", "quota", "succeeded", 0.1)
    assert calls == []
    metrics.render()
    assert calls == [1]


def test_runs_since_success_counts_unsuccessful_runs_until_a_success() -> None:
    metrics = Metrics(lambda: [])
    for outcome in ("failed", "skipped", "cancelled", "dry_run"):
        metrics.run_finished("report", "action", outcome, None)  # type: ignore[arg-type]
    metrics.run_finished("other", "action", "succeeded", 1.0)
    since = {s[1]["job"]: s[2] for s in families(metrics)["ductape_runner_runs_since_success"]}
    assert since == {"report": 3.0, "other": 0.0}
    metrics.run_finished("report", "action", "succeeded", 1.0)
    metrics.run_finished("report", "action", "failed", 1.0)
    since = {s[1]["job"]: s[2] for s in families(metrics)["ductape_runner_runs_since_success"]}
    assert since == {"report": 1.0, "other": 0.0}


def test_health_and_readiness_are_asked_at_scrape_time() -> None:
    answers = {"healthy": (True, "ok"), "ready": (False, "folder missing")}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    metrics = Metrics(lambda: [])
    metrics.watch_probes(lambda: answers["healthy"], lambda: answers["ready"])
    got = families(metrics)
    assert (got["ductape_runner_healthy"][0][2], got["ductape_runner_ready"][0][2]) == (1.0, 0.0)
    answers["healthy"], answers["ready"] = (False, "store away"), (True, "3 jobs")
    got = families(metrics)
    assert (got["ductape_runner_healthy"][0][2], got["ductape_runner_ready"][0][2]) == (0.0, 1.0)
    failing = Metrics(lambda: [])
    failing.watch_probes(broken, broken)
    assert families(failing)["ductape_runner_healthy"][0][2] == 0.0
