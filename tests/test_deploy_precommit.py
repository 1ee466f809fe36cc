"""The pre-commit hooks (.pre-commit-hooks.yaml), run by pre-commit itself on a scratch repository.

`pre-commit try-repo` installs this checkout into a fresh hook environment, as a user's
`pre-commit install` would from a tag, and runs both hooks on the staged files. Each run
installs the environment anew (try-repo keeps no cache): about 20 s, so one run per case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD_JOB = """\
kind: action
app: shop
event: refresh
product: shop
env: prd
schedule:
  cron: "*/15 * * * *"
"""
pytestmark = pytest.mark.slow


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=_env())


def _env() -> dict[str, str]:
    who = {f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER") for k, v in
           (("NAME", "Job Author"), ("EMAIL", "author@example.com"))}  # fmt: skip
    # The hook environment gets the pinned versions, as the README's installs do.
    return {**os.environ, **who, "PIP_CONSTRAINT": str(ROOT / "requirements.lock")}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A Git repository of job files with one committed job, `report`."""
    repo = tmp_path / "jobs-repo"
    (repo / "jobs.d").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "jobs.d" / "report.yaml").write_text(GOOD_JOB.replace("refresh", "report"))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "report")
    return repo


def try_repo(repo: Path) -> tuple[int, dict[str, str]]:
    """Both hooks on what is staged in `repo`: the exit status and each hook's output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT)],
        cwd=repo, capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    sections = {}
    for part in out.split("- hook id: ")[1:]:
        hook, _, rest = part.partition("\n")
        sections[hook.strip()] = rest
    assert proc.returncode in (0, 1), out
    return proc.returncode, sections | {"all": out}


def test_a_bad_file_fails_the_commit_with_where_and_what(scratch: Path) -> None:
    jobs = scratch / "jobs.d"
    (jobs / "broken.yaml").write_text(GOOD_JOB.replace("*/15 * * * *", "61 * * * *"))
    # Valid alone, but `report` is taken by a committed file: only the folder hook sees it.
    (jobs / "sales.yaml").write_text("name: report\n" + GOOD_JOB)
    git(scratch, "add", ".")
    code, out = try_repo(scratch)
    assert code == 1, out["all"]
    bad_cron = "jobs.d/broken.yaml:7:9: schedule.cron: bad minute field '61' (allowed 0-59)"
    duplicate = "jobs.d/sales.yaml:1:1: name: duplicate job name 'report': also defined at "
    per_file, folder = out["ductape-runner-check"], out["ductape-runner-check-folder"]
    assert bad_cron in per_file and duplicate not in per_file, out["all"]
    assert bad_cron in folder and duplicate + "jobs.d/report.yaml:1" in folder, out["all"]


def test_a_good_file_passes(scratch: Path) -> None:
    (scratch / "jobs.d" / "refresh.yaml").write_text(GOOD_JOB)
    (scratch / "README.md").write_text("not a job file: the hooks leave it alone\n")
    git(scratch, "add", ".")
    code, out = try_repo(scratch)
    assert code == 0, out["all"]
    assert out["all"].count("Passed") == 2, out["all"]
