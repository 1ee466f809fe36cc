"""The dashboard on 10,000 jobs: page load in chromium, and whether serving it delays runs.

    .venv/bin/python bench/ui.py [--jobs 10000] [--loads 10] [--hammer-s 10]

Starts `ductape-runner run --dry-run` (nothing is called) on N cron jobs plus 10 jobs that
fire every second, with the control API on loopback TCP. Then:
1. loads jobs pages in Debian's chromium (Playwright, no browser download) and reads the
   Navigation Timing of each load: server time (request to first byte), DOMContentLoaded
   and load, from the start of the navigation;
2. measures the every-second jobs' lateness (start minus scheduled instant, from the state
   file) while idle, then while 4 clients fetch jobs pages back to back.
Prints both as tables. Needs chromium (scripts/test-tools installs it as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = {
    "first page (failures first)": "/ui/",
    "sorted by next fire, page 50": "/ui/?sort=next&page=50",
    "filtered to one job": "/ui/?q=c009999",
    "one job": "/ui/jobs/c000042",
    "folder (101 files)": "/ui/folder",
    "pictures, first 50 jobs": "/ui/pictures",
}
FAST = 10


def write_folder(folder: Path, jobs: int) -> None:
    folder.mkdir(parents=True)
    zones = ["UTC", "America/New_York", "Europe/Amsterdam", "Asia/Kolkata"]
    for f in range(-(-jobs // 100)):
        lines = ["jobs:"]
        for i in range(f * 100, min(f * 100 + 100, jobs)):
            lines.append(
                f"  - {{name: c{i:06d}, kind: quota, product: p, env: dev, tag: t, schedule:"
                f" {{cron: '{i % 60} {(i // 60) % 24} * * *', tz: {zones[i % 4]}}}}}"
            )
        (folder / f"jobs-{f:04d}.yaml").write_text("\n".join(lines) + "\n")
    fast = ["jobs:"] + [
        f"  - {{name: fast{n}, kind: quota, product: p, env: dev, tag: t, schedule: {{every: 1s}}}}"
        for n in range(FAST)
    ]
    (folder / "fast.yaml").write_text("\n".join(fast) + "\n")


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "DUCTAPE_RUNNER_JOBS_DIR": str(tmp / "jobs.d"),
        "DUCTAPE_RUNNER_STATE": str(tmp / "state.sqlite3"),
        "DUCTAPE_RUNNER_CONTROL_SOCKET": str(tmp / "control.sock"),
        "DUCTAPE_RUNNER_CONTROL_TCP": "127.0.0.1:0",
        "DUCTAPE_RUNNER_LOG_JSON": "true",
        "DUCTAPE_RUNNER_LOG_LEVEL": "warning",
    }
    log = tmp / "runner.log"
    command = [sys.executable, "-m", "runner", "run", "--dry-run"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    socket = str(tmp / "control.sock")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=socket)) as client:
                if client.get("http://d/readyz").status_code == 200:
                    where = client.get("http://d/ui/where").json()["tcp"]
                    return proc, f"http://{where}", (tmp / "control.token").read_text().strip()
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("daemon not ready within 300 s")


def browser_loads(base: str, token: str, loads: int) -> list[tuple[str, list[dict[str, float]]]]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    timing = (
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return {server: n.responseStart - n.requestStart,"
        " dom: n.domContentLoadedEventEnd - n.startTime, load: n.loadEventEnd - n.startTime,"
        " rows: document.querySelectorAll('tbody tr').length}; })()"
    )
    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page()
        page.goto(f"{base}/ui/?token={token}")
        for label, path in PAGES.items():
            samples = []
            for n in range(loads):  # a fresh URL each time: rendered, never the 1 s cache
                page.goto(f"{base}{path}{'&' if '?' in path else '?'}n={n}", wait_until="load")
                samples.append(page.evaluate(timing))
            results.append((label, samples))
        browser.close()
    return results


def lateness(state: Path, since_ms: int, until_ms: int) -> list[int]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT started_ms - scheduled_ms FROM occurrences WHERE job LIKE 'fast%'"
            " AND scheduled_ms BETWEEN ? AND ? AND started_ms IS NOT NULL",
            (since_ms, until_ms),
        ).fetchall()
    finally:
        db.close()
    return [late for (late,) in rows]


def hammer(
    base: str, token: str, seconds: float, fresh: bool, clients: int = 4, pause_s: float = 0.0
) -> int:
    """Fetch pages back to back (or `pause_s` apart); `fresh`: each URL new, never cached."""
    stop = time.monotonic() + seconds
    served = [0] * clients

    def client(n: int) -> None:
        paths = list(PAGES.values())
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            while time.monotonic() < stop:
                path = paths[served[n] % len(paths)]
                if fresh:
                    path += f"{'&' if '?' in path else '?'}n={n}-{served[n]}"
                http.get(base + path).raise_for_status()
                served[n] += 1
                time.sleep(pause_s)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(served)


def now_ms() -> int:
    return int(time.time() * 1000)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--hammer-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_folder(tmp / "jobs.d", args.jobs)
        proc, base, token = start(tmp)
        try:
            loads = browser_loads(base, token, args.loads)
            time.sleep(2)
            t0 = now_ms()
            time.sleep(args.hammer_s)
            t1 = now_ms()
            tabs = hammer(base, token, args.hammer_s, fresh=True, clients=10, pause_s=1.0)
            t4 = now_ms()
            cached = hammer(base, token, args.hammer_s, fresh=False)
            t2 = now_ms()
            rendered = hammer(base, token, args.hammer_s, fresh=True)
            t3 = now_ms()
            time.sleep(1.5)  # the last occurrences of the window start
            state = tmp / "state.sqlite3"
            windows = [
                ("idle", lateness(state, t0, t1)),
                (f"10 tabs, a new page each second: {tabs} pages", lateness(state, t1, t4)),
                (f"4 clients, same 4 URLs: {cached} pages", lateness(state, t4, t2)),
                (f"4 clients, every URL new: {rendered} pages", lateness(state, t2, t3)),
            ]
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.jobs:,} jobs, `run --dry-run`, chromium, {args.loads} loads per page (ms)")
    print("| page | rows | server p50 | DOMContentLoaded p50 | load p50 | load max |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, samples in loads:
        load = [s["load"] for s in samples]
        server = statistics.median(s["server"] for s in samples)
        dom = statistics.median(s["dom"] for s in samples)
        print(
            f"| {label} | {int(samples[0]['rows'])} | {server:.0f} | {dom:.0f}"
            f" | {statistics.median(load):.0f} | {max(load):.0f} |"
        )
    print(f"\nlateness of {FAST} every-1s jobs (ms), windows of {args.hammer_s:.0f} s")
    print("| window | runs | p50 | p99 | max |\n|---|---:|---:|---:|---:|")
    for label, values in windows:
        floats = [float(v) for v in values]
        print(
            f"| {label} | {len(values)} | {pct(floats, 0.5):.0f} | {pct(floats, 0.99):.0f}"
            f" | {max(floats, default=0):.0f} |"
        )


if __name__ == "__main__":
    main()
