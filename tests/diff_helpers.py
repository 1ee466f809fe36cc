"""Real Git repositories for `diff` tests, made commit by commit in a temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

NOW = "2026-03-27T12:00:00Z"  # two days before Europe's spring-forward (29 March)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# The change the README shows: a 60x frequency increase, a zone change across a DST
# transition, a renamed job, a moved job, a removed job, a past one-shot, a broken file.
QUOTA = "kind: quota\nproduct: shop\nenv: prd\n"
BEFORE: dict[str, str | None] = {
    "jobs.d/report.yaml": QUOTA + "tag: report\nschedule: {cron: '0 */1 * * *', tz: Europe/Amsterdam}\n",
    "jobs.d/backup.yaml": QUOTA + "tag: backup\nschedule: {cron: '0 9 * * *', tz: Europe/Amsterdam}\n",
    "jobs.d/cleanup.yaml": QUOTA + "tag: cleanup\nschedule: {every: 6h, start_at: '2026-01-01T00:00:00Z'}\n",
    "jobs.d/audit.yaml": QUOTA + "name: audit\ntag: audit\nschedule: {cron: '30 2 * * 1'}\n",
    "jobs.d/legacy.yaml": QUOTA + "tag: legacy\nschedule: {cron: '0 0 * * *'}\n",
    "jobs.d/sync.yaml": QUOTA + "tag: sync\nschedule: {cron: '*/15 * * * *'}\n",
}  # fmt: skip
AFTER: dict[str, str | None] = {
    "jobs.d/report.yaml": QUOTA + "tag: report\nschedule: {cron: '*/1 * * * *', tz: Europe/Amsterdam}\n",
    "jobs.d/backup.yaml": QUOTA + "tag: backup\nschedule: {cron: '0 9 * * *', tz: America/New_York}\n",
    "jobs.d/cleanup.yaml": None,
    "jobs.d/tidy.yaml": BEFORE["jobs.d/cleanup.yaml"],
    "jobs.d/audit.yaml": None,
    "jobs.d/ops/audit.yaml": BEFORE["jobs.d/audit.yaml"],
    "jobs.d/legacy.yaml": None,
    "jobs.d/sync.yaml": QUOTA + "tag: sync\nschedule: {cron: '61 * * * *'}\n",
    "jobs.d/kickoff.yaml": QUOTA + "tag: kickoff\nschedule: {start_at: '2026-03-01T00:00:00Z'}\n",
}  # fmt: skip


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV, "HOME": str(repo)},
    )
    return proc.stdout


def make_repo(repo: Path, *commits: Mapping[str, str | None]) -> Path:
    """A repository with one commit per mapping (path -> content, None deletes it)."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    for number, files in enumerate(commits, 1):
        for name, text in files.items():
            path = repo / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {number}")
    return repo


def run_diff(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "diff", "--now", NOW, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        env={**os.environ, **GIT_ENV, "HOME": str(repo)},
    )
