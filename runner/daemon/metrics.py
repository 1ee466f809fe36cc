"""Prometheus metrics of the daemon, in a registry of their own, rendered for /metrics.

Per-job gauges and the jobs-by-status counts are read from a snapshot callable at
scrape time, so a large job set costs nothing between scrapes. Per-job counts are plain
dictionaries rendered when scraped, not prometheus_client children (a child with its lock
for each job and outcome). Histograms are labelled by kind only: a per-job label on a
histogram multiplies every bucket by the job count.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TypeAlias

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from runner.store import JobStatus

Outcome: TypeAlias = Literal["succeeded", "failed", "skipped", "cancelled", "dry_run"]
# (job name, status, next fire as seconds since the epoch or None)
JobSnapshot: TypeAlias = Iterable[tuple[str, str, float | None]]
# /healthz or /readyz: (ok, detail)
Probe: TypeAlias = Callable[[], tuple[bool, str]]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version reads
STATUSES: tuple[JobStatus, ...] = (
    "scheduled",
    "queued",
    "running",
    "suspended",
    "paused",
    "completed",
    "failed",
)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
LATENESS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class _SnapshotCollector(Collector):
    """Jobs by status and each job's next fire time, computed when scraped."""

    def __init__(self, snapshot: Callable[[], JobSnapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        jobs, next_fire = self._families()
        counts: Tally[str] = Tally()
        for name, status, next_ts in self.snapshot():
            counts[status] += 1
            if next_ts is not None:
                next_fire.add_metric([name], next_ts)
        for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
            jobs.add_metric([status], counts.get(status, 0))
        return [jobs, next_fire]

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "ductape_runner_jobs", "Jobs currently defined, by status.", labels=["status"]
            ),
            GaugeMetricFamily(
                "ductape_runner_next_fire_timestamp_seconds",
                "When each scheduled job fires next (seconds since the epoch).",
                labels=["job"],
            ),
        ]


class _PerJobCollector(Collector):
    """Occurrences finished by job and outcome, and unsuccessful ones since each job's last
    success: counted in dictionaries, rendered when scraped (issue 12). A labelled child
    per job was about 3% of the loop's time at 100,000 one-shots a minute (py-spy), each
    job's first run making two, and they were most of the memory those jobs left behind."""

    def __init__(self, replica: tuple[str, ...]) -> None:
        self.replica = replica
        self.runs: dict[tuple[str, str], int] = {}
        self.since: dict[str, int] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        runs, since = self._families()
        # Copies (one C call each, atomic under the GIL): a scrape may read from another
        # thread while the loop counts.
        for (job, outcome), count in self.runs.copy().items():
            runs.add_metric([job, outcome, *self.replica], count)
        for job, count in self.since.copy().items():
            since.add_metric([job], count)
        return [runs, since]

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        labels = ["job", "outcome", "replica"] if self.replica else ["job", "outcome"]
        return (
            CounterMetricFamily(
                "ductape_runner_runs",
                "Occurrences finished, by outcome (and the replica that decided, with replicas).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "ductape_runner_runs_since_success",
                "Occurrences finished failed, skipped or cancelled since the job's last "
                "success (or since the daemon started).",
                labels=["job"],
            ),
        )


class _ProbeCollector(Collector):
    """/healthz and /readyz as 0/1 gauges, asked when scraped, so alert rules see a replica
    that answers scrapes but is degraded (database away, credentials refused)."""

    def __init__(self, healthy: Probe, ready: Probe) -> None:
        self.probes = (("healthy", healthy, "/healthz"), ("ready", ready, "/readyz"))

    def describe(self) -> Iterable[Metric]:
        return [self._family(name, path) for name, _, path in self.probes]

    def collect(self) -> Iterable[Metric]:
        families = []
        for name, probe, path in self.probes:
            family = self._family(name, path)
            try:
                ok = probe()[0]
            except Exception:  # /healthz answers 503 then too
                ok = False
            family.add_metric([], 1.0 if ok else 0.0)
            families.append(family)
        return families

    @staticmethod
    def _family(name: str, path: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"ductape_runner_{name}", f"1 while {path} answers 200, else 0.")


class Metrics:
    """Every metric the daemon exports; the daemon calls these as things happen."""

    def __init__(self, snapshot: Callable[[], JobSnapshot], replica: str | None = None) -> None:
        """`replica`: with replicas sharing PostgreSQL, outcomes carry this replica's id
        (a skip or a failure says which replica decided it); not with SQLite."""
        self.registry = CollectorRegistry()
        self._replica = (replica,) if replica else ()
        r = self.registry
        # Labelled children (by kind), looked up once: `labels()` takes a lock and builds
        # its key on every call.
        self._children: dict[tuple[str, ...], Any] = {}
        self.per_job = _PerJobCollector(self._replica)
        r.register(self.per_job)
        self.run_duration = Histogram(
            "ductape_runner_run_duration_seconds",
            "Wall time of an occurrence, all attempts and retry delays included.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.attempt_duration = Histogram(
            "ductape_runner_attempt_duration_seconds",
            "Duration of one call to Ductape.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.fire_lateness = Histogram(
            "ductape_runner_fire_lateness_seconds",
            "How long after its scheduled instant an occurrence started.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.invalid_files = Gauge(
            "ductape_runner_invalid_files", "Job files that failed to load.", registry=r
        )
        self.last_reload = Gauge(
            "ductape_runner_last_reload_success_timestamp_seconds",
            "When the jobs folder was last reconciled (seconds since the epoch).",
            registry=r,
        )
        self.folder_guard = Gauge(
            "ductape_runner_folder_guard",
            "1 while the mass-deletion guard holds the jobs of a vanished or emptied folder.",
            registry=r,
        )
        self.last_good_jobs = Gauge(
            "ductape_runner_last_good_jobs",
            "Jobs running their last good version because their file is invalid.",
            registry=r,
        )
        r.register(_SnapshotCollector(snapshot))

    def watch_probes(self, healthy: Probe, ready: Probe) -> None:
        """Export /healthz and /readyz as ductape_runner_healthy and ductape_runner_ready."""
        self.registry.register(_ProbeCollector(healthy, ready))

    def run_finished(self, job: str, kind: str, outcome: Outcome, duration_s: float | None) -> None:
        """One occurrence is final; skipped ones have no duration."""
        runs, since = self.per_job.runs, self.per_job.since
        key = (job, outcome)
        runs[key] = runs.get(key, 0) + 1
        if outcome == "succeeded":
            since[job] = 0
        elif outcome != "dry_run":
            since[job] = since.get(job, 0) + 1
        if duration_s is not None:
            self._child(self.run_duration, "run", kind).observe(max(duration_s, 0.0))

    def attempt(self, kind: str, duration_s: float) -> None:
        self._child(self.attempt_duration, "attempt", kind).observe(max(duration_s, 0.0))

    def _child(self, metric: Any, *key: str) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*key[1:])
        return child

    def lateness(self, seconds: float) -> None:
        self.fire_lateness.observe(max(seconds, 0.0))

    def reloaded(
        self, ts: float, invalid_files: int, *, guard: bool = False, last_good: int = 0
    ) -> None:
        self.last_reload.set(ts)
        self.invalid_files.set(invalid_files)
        self.folder_guard.set(1 if guard else 0)
        self.last_good_jobs.set(last_good)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as (name, labels, value): for tests and `status`."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value
