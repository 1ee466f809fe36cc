"""Fire lateness, CPU and peak RSS: the real daemon against APScheduler 3, same workloads.

    .venv/bin/python bench/harness.py [--sizes 1000,10000,100000] [--burst 10000]
        [--spread 60] [--only runner|apscheduler] [--peers httpx,aiohttp] [--profile DIR]
        [--rounds 1] [--out bench/RESULTS.md]

For each workload (N one-shot jobs whose instants are spread uniformly over `--spread`
seconds, then `--burst` jobs all due at one instant) and each side, one fresh emulator
process (`python -m runner.ductape.emulator`, access log off) and one scheduler process:

- runner: `python -m runner run` on a temp jobs folder (1,000 jobs per generated file,
  `schedule: {start_at: <ms>}`) and a temp state file, JSON logs to a file;
- apscheduler: bench/aps_worker.py, AsyncIOScheduler with one date job per instant,
  each POSTing the same encrypted call through httpx ("apscheduler") and, as a second
  peer in the same run, through aiohttp ("apscheduler+aiohttp"): a user picks the best
  client available (`--peers` chooses). `--peers bare` adds "asyncio+aiohttp": the
  same worker with no scheduler library (`--scheduler none`, one `loop.call_at` per
  instant), the floor under anything that calls through aiohttp: a measure of what
  the client alone costs, not a scheduler a user would run.

The scheduler starts well before the first instant (warm-up: the daemon's
`daemon.started` log line, the worker's `ready`), then the harness waits for every call.
Lateness is the emulator's `received_at` minus the instant carried in the idempotency
key; CPU seconds and peak RSS (VmHWM) are the scheduler process's, from psutil and
/proc; the emulator's CPU seconds over the same window say when the server, not the
scheduler, was the limit (both share the machine's cores). `--rounds N` runs each
workload N times with the sides alternating and reports each measure's median.
Prints a Markdown table and writes it, with the machine and the command, to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from runner.ductape import emulator as emu

ROOT = Path(__file__).resolve().parent.parent
JOBS_PER_FILE = 1000
CALLS_PATH = "/_emulator/calls"
PEER_SIDES = {"httpx": "apscheduler", "aiohttp": "apscheduler+aiohttp", "bare": "asyncio+aiohttp"}
# Each peer side: the worker's HTTP client and scheduler.
PEER_WORKER = {
    "apscheduler": ("httpx", "apscheduler"),
    "apscheduler+aiohttp": ("aiohttp", "apscheduler"),
    "asyncio+aiohttp": ("aiohttp", "none"),
}


@dataclass(frozen=True)
class Workload:
    label: str
    jobs: int
    spread_ms: int

    def instants(self, t0_ms: int) -> list[int]:
        """Instant of job i: t0 + i * spread / jobs (all t0 for a burst)."""
        return [t0_ms + (i * self.spread_ms) // self.jobs for i in range(self.jobs)]


@dataclass(frozen=True)
class Result:
    side: str
    workload: Workload
    calls: int
    keys: int
    lost: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    drain_s: float  # first instant to the last call received
    startup_s: float
    cpu_s: float  # from ready to the end (the firing phase)
    startup_cpu_s: float
    peak_rss_mb: float
    emulator_cpu_s: float = math.nan  # the emulator's CPU from ready to the end
    rounds: int = 1

    @property
    def rate(self) -> float:
        """Calls per second over the whole firing phase (first instant to last call)."""
        return self.calls / self.drain_s if self.drain_s > 0 else math.nan


# ---- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def emulator_process() -> Iterator[str]:
    """A fresh emulator in its own process; yields its base URL."""
    with emulator_with_pid() as (url, _):
        yield url


@contextmanager
def emulator_with_pid() -> Iterator[tuple[str, int]]:
    """A fresh emulator in its own process; yields its base URL and process id."""
    port = free_port()
    command = [sys.executable, "-m", "runner.ductape.emulator", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(url + CALLS_PATH, timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("emulator did not start") from None
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def peak_rss_mb(pid: int) -> float:
    """The process's high-water RSS (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while needle not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SystemExit(f"process exited {proc.returncode}:\n{path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {needle!r} within {limit_s} s")
        time.sleep(0.05)


def runner_command(tmp: Path, profile: Path | None) -> list[str]:
    if profile is None:
        return [sys.executable, "-m", "runner", "run"]
    out = profile / f"runner-{time.strftime('%H%M%S')}.prof"
    return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "runner", "run"]


def write_jobs(folder: Path, instants: list[int]) -> None:
    """One-shot quota jobs, JOBS_PER_FILE per YAML file (`jobs:` list)."""
    folder.mkdir()
    for start in range(0, len(instants), JOBS_PER_FILE):
        lines = ["jobs:"]
        for i in range(start, min(start + JOBS_PER_FILE, len(instants))):
            lines.append(
                f"  - {{name: b{i:06d}, kind: quota, product: p, env: dev, tag: t,"
                f" schedule: {{start_at: {instants[i]}}}}}"
            )
        (folder / f"jobs-{start // JOBS_PER_FILE:04d}.yaml").write_text("\n".join(lines) + "\n")


def start_runner(
    tmp: Path, url: str, profile: Path | None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    env = {
        **(extra_env or {}),
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "DUCTAPE_RUNNER_JOBS_DIR": str(tmp / "jobs.d"),
        "DUCTAPE_RUNNER_STATE": str(tmp / "state.sqlite3"),
        "DUCTAPE_RUNNER_BASE_URL": url,
        "DUCTAPE_RUNNER_WORKSPACE_ID": emu.DEMO_WORKSPACE_ID,
        "DUCTAPE_RUNNER_USER_ID": emu.DEMO_USER_ID,
        "DUCTAPE_RUNNER_PUBLIC_KEY": emu.DEMO_PUBLIC_KEY,
        "DUCTAPE_RUNNER_ACCESS_TOKEN": emu.DEMO_ACCESS_TOKEN,
        "DUCTAPE_RUNNER_CONTROL_SOCKET": str(tmp / "control.sock"),
        "DUCTAPE_RUNNER_LOG_JSON": "true",
        # Passed through for a side-by-side of the daemon's event loops.
        "DUCTAPE_RUNNER_EVENT_LOOP": os.environ.get("DUCTAPE_RUNNER_EVENT_LOOP", "auto"),
    }
    log = tmp / "runner.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            runner_command(tmp, profile), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return proc, log


def start_aps(
    tmp: Path, url: str, instants: list[int], side: str
) -> tuple[subprocess.Popen[bytes], Path]:
    client, scheduler = PEER_WORKER[side]
    source = tmp / "instants.json"
    source.write_text(json.dumps(instants))
    log = tmp / "aps.log"
    command = [sys.executable, str(ROOT / "bench" / "aps_worker.py"), "--base-url", url]
    command += ["--client", client, "--scheduler", scheduler]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--instants", str(source)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 60 s (APScheduler under a 100k backlog ignores SIGTERM)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---- measuring ----------------------------------------------------------------------


def lead_s(jobs: int) -> float:
    """Warm-up allowed before the first instant: start-up grows with the job count."""
    return 6.0 + jobs / 2500


def fetch_calls(url: str) -> list[dict[str, Any]]:
    response = httpx.get(url + CALLS_PATH, timeout=120)
    response.raise_for_status()
    calls: list[dict[str, Any]] = response.json()
    return calls


def wait_for_calls(url: str, expected: int, last_instant_ms: int) -> list[dict[str, Any]]:
    """Sleep past the last instant (no polling load on the emulator while it fires), then
    poll until `expected` calls arrived or arrivals stop for 20 s."""
    time.sleep(max(last_instant_ms / 1000 - time.time(), 0) + 1.0)
    seen, still_since = -1, time.monotonic()
    while True:
        calls = fetch_calls(url)
        if len(calls) >= expected:
            time.sleep(1.0)  # a duplicate would arrive now
            return fetch_calls(url)
        if len(calls) != seen:
            seen, still_since = len(calls), time.monotonic()
        elif time.monotonic() - still_since > 20:
            return calls
        time.sleep(2.0 if expected > 20_000 else 0.5)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def lateness(calls: list[dict[str, Any]]) -> tuple[list[float], float]:
    """Sorted lateness (ms) of the first call per key, and the last arrival (epoch s)."""
    first: dict[str, float] = {}
    for call in calls:
        received = datetime.fromisoformat(call["received_at"]).timestamp() * 1000
        key = call["idempotency_key"]
        first[key] = min(first.get(key, received), received)
    late = sorted(received - int(key.rsplit(":", 1)[1]) for key, received in first.items())
    return late, max(first.values(), default=0.0) / 1000


def measure(side: str, work: Workload, profile: Path | None) -> Result:
    with tempfile.TemporaryDirectory() as name, emulator_with_pid() as (url, emulator_pid):
        tmp = Path(name)
        emulator = psutil.Process(emulator_pid)
        t0_ms = math.ceil(time.time() + lead_s(work.jobs)) * 1000
        instants = work.instants(t0_ms)
        launched = time.monotonic()
        if side == "runner":
            write_jobs(tmp / "jobs.d", instants)
            launched = time.monotonic()
            proc, log = start_runner(tmp, url, profile)
            ready = '"daemon.started"'
        else:
            proc, log = start_aps(tmp, url, instants, side)
            ready = "ready"
        ps = psutil.Process(proc.pid)
        wait_for_line(log, ready, proc, limit_s=lead_s(work.jobs) + 60)
        startup_s, startup_cpu = time.monotonic() - launched, cpu_seconds(ps)
        emulator_before = cpu_seconds(emulator)
        if time.time() * 1000 > t0_ms - 500:
            print(f"  warning: {side} was ready only {t0_ms / 1000 - time.time():.2f} s early")
        calls = wait_for_calls(url, work.jobs, instants[-1])
        cpu, rss = cpu_seconds(ps), peak_rss_mb(proc.pid)
        emulator_cpu = cpu_seconds(emulator) - emulator_before
        stop(proc)
        errors = count_errors(side, log, calls)
    late, last_arrival = lateness(calls)
    keys = len(late)
    return Result(
        side=side,
        workload=work,
        calls=len(calls),
        keys=keys,
        lost=work.jobs - keys,
        errors=errors,
        p50_ms=percentile(late, 0.50),
        p99_ms=percentile(late, 0.99),
        max_ms=late[-1] if late else math.nan,
        drain_s=last_arrival - t0_ms / 1000 if late else math.nan,
        startup_s=startup_s,
        cpu_s=cpu - startup_cpu,
        startup_cpu_s=startup_cpu,
        peak_rss_mb=rss,
        emulator_cpu_s=emulator_cpu,
    )


def median_of(rounds: list[Result]) -> Result:
    """Each measure's median over the rounds of one side and workload (calls and lost: the
    worst round, so a loss in any round shows)."""
    if len(rounds) == 1:
        return rounds[0]

    def mid(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in rounds))

    names = ["p50_ms", "p99_ms", "max_ms", "drain_s", "startup_s", "cpu_s", "startup_cpu_s"]
    names += ["peak_rss_mb", "emulator_cpu_s"]
    worst = max(rounds, key=lambda r: (r.lost, r.errors))
    return dataclasses.replace(worst, rounds=len(rounds), **{n: mid(n) for n in names})


def count_errors(side: str, log: Path, calls: list[dict[str, Any]]) -> int:
    """Calls that did not succeed: non-ok outcomes at the emulator, plus client-side errors."""
    bad = sum(1 for c in calls if c["outcome"] != "ok")
    lines = log.read_text(errors="replace").splitlines()
    if side in PEER_WORKER:
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        return bad + int(summary.get("errors", 0))
    for line in lines:
        if '"run.finished"' in line:
            bad += json.loads(line).get("outcome") != "succeeded"
    return bad


# ---- reporting ----------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    ram = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def table(results: list[Result]) -> str:
    lines = [
        "| workload | scheduler | calls | lost | errors | p50 ms | p99 ms | max ms "
        "| fire→last call s | calls/s | start-up s | CPU s (firing) | CPU s (start-up) "
        "| peak RSS MiB | emulator CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [r.workload.label, r.side, f"{r.calls:,}", str(r.lost), str(r.errors)]
        cells += [f"{r.p50_ms:,.1f}", f"{r.p99_ms:,.1f}", f"{r.max_ms:,.1f}"]
        cells += [f"{r.drain_s:.1f}", f"{r.rate:,.0f}", f"{r.startup_s:.1f}"]
        cells += [f"{r.cpu_s:.1f}", f"{r.startup_cpu_s:.1f}", f"{r.peak_rss_mb:,.0f}"]
        cells += [f"{r.emulator_cpu_s:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: list[Result]) -> str:
    """Peer / runner for each workload run on both sides (> 1: the runner is better)."""
    by = {(r.workload.label, r.side): r for r in results}
    lines = [
        "| workload | p50 ratio | p99 ratio | max ratio | CPU ratio | peak RSS ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pairs_of = [
        (label, peer)
        for label in dict.fromkeys(r.workload.label for r in results)
        for peer in PEER_SIDES.values()
    ]
    for label, peer in pairs_of:
        ours, theirs = by.get((label, "runner")), by.get((label, peer))
        if ours is None or theirs is None:
            continue
        pairs = [
            (theirs.p50_ms, ours.p50_ms),
            (theirs.p99_ms, ours.p99_ms),
            (theirs.max_ms, ours.max_ms),
            (theirs.cpu_s, ours.cpu_s),
            (theirs.peak_rss_mb, ours.peak_rss_mb),
        ]
        cells = [f"{a / b:.2f}" if b > 0 else "n/a" for a, b in pairs]
        lines.append(f"| {label} ({peer}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: list[Result], command: str) -> str:
    return "\n".join(
        [
            "## Fire lateness: runner vs APScheduler 3",
            "",
            f"Machine: {machine()}",
            "",
            f"Command: `{command}`",
            "",
            f"Run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            "",
            rounds_note(results),
            table(results),
            "",
            "Ratios, peer / runner (above 1: the runner is better by that factor):",
            "",
            ratios(results),
            "",
        ]
    )


def rounds_note(results: list[Result]) -> str:
    count = max((r.rounds for r in results), default=1)
    if count == 1:
        return ""
    return (
        f"Each row: the median of {count} rounds per measure (sides alternating within each "
        "round); calls, lost and errors from the worst round.\n"
    )


def workloads(sizes: list[int], burst: int, spread_s: float) -> list[Workload]:
    spread = round(spread_s * 1000)
    found = [Workload(f"{n:,} jobs over {spread_s:g} s", n, spread) for n in sizes]
    if burst:
        found.append(Workload(f"{burst:,} due at one instant", burst, 0))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds")
    parser.add_argument("--only", choices=["runner", "apscheduler"])
    parser.add_argument(
        "--peers",
        default="httpx,aiohttp",
        help="peers, comma-separated: httpx, aiohttp (APScheduler with that client), bare",
    )
    parser.add_argument("--profile", type=Path, help="cProfile the daemon into this folder")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each workload this many times, sides alternating; report each measure's median",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/harness.py", *sys.argv[1:]])
    sizes = [int(s) for s in args.sizes.split(",") if s]
    peers = [PEER_SIDES[p] for p in args.peers.split(",") if p]
    sides = {"runner": ["runner"], "apscheduler": peers}.get(args.only, ["runner", *peers])
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = []
    for work in workloads(sizes, args.burst, args.spread):
        rounds: dict[str, list[Result]] = {side: [] for side in sides}
        for number in range(args.rounds):
            for side in sides:
                print(f"- {work.label}: {side} (round {number + 1}) ...", flush=True)
                rounds[side].append(measure(side, work, args.profile))
                print(table(rounds[side][-1:]).splitlines()[-1], flush=True)
        results += [median_of(rounds[side]) for side in sides]
    text = report(results, command)
    print()
    print(text)
    write_results(args.out, text)


def write_results(path: Path, text: str) -> None:
    """Replace the generated section of RESULTS.md, keeping the hand-written notes after it."""
    marker = "<!-- end of generated section -->"
    notes = ""
    if path.exists() and marker in path.read_text():
        notes = path.read_text().split(marker, 1)[1]
    path.write_text(f"# Benchmark results\n\n{text}\n{marker}{notes}")


if __name__ == "__main__":
    main()
