"""The pre-commit hooks (.pre-commit-hooks.yaml), run by pre-commit itself on a scratch repository.

`pre-commit try-repo` installs this checkout into a fresh hook environment, as a user's
`pre-commit install` would from a tag, and runs both hooks on the staged files. Each run
installs the environment anew (try-repo keeps no cache): about 20 s, so one run per case,
and the two cases run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_deploy_readme import hook_output_shown

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


def scratch(folder: Path) -> Path:
    """A Git repository of job files with one committed job, `report`."""
    repo = folder / "jobs-repo"
    (repo / "jobs.d").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "jobs.d" / "report.yaml").write_text(GOOD_JOB.replace("refresh", "report"))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "report")
    return repo


def bad_commit(repo: Path) -> Path:
    jobs = repo / "jobs.d"
    (jobs / "daily-report.yaml").write_text(GOOD_JOB.replace("*/15 * * * *", "61 * * * *"))
    # Valid alone, but `report` is taken by a committed file: only the folder hook sees it.
    (jobs / "sales.yaml").write_text("name: report\n" + GOOD_JOB)
    git(repo, "add", ".")
    return repo


def good_commit(repo: Path) -> Path:
    (repo / "jobs.d" / "refresh.yaml").write_text(GOOD_JOB)
    (repo / "README.md").write_text("not a job file: the hooks leave it alone\n")
    git(repo, "add", ".")
    return repo


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, str]]]:
    """Both cases' try-repo runs, started together: each spends most of its time installing."""
    repos = {
        "bad": bad_commit(scratch(tmp_path_factory.mktemp("bad"))),
        "good": good_commit(scratch(tmp_path_factory.mktemp("good"))),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {case: pool.submit(try_repo, repo) for case, repo in repos.items()}
        return {case: run.result() for case, run in runs.items()}


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
    return proc.returncode, sections | {"all": out}


def test_a_bad_file_fails_the_commit_as_the_readme_shows(
    outcomes: dict[str, tuple[int, dict[str, str]]],
) -> None:
    code, out = outcomes["bad"]
    assert code == 1, out["all"]
    shown = hook_output_shown()
    assert list(shown) == [
        "ductape-runner check (changed job files)",
        "ductape-runner check (whole jobs folder)",
    ]
    per_file, folder = shown.values()
    assert out["all"].count("Failed") == 2
    assert printed(out["ductape-runner-check"]) == per_file
    assert printed(out["ductape-runner-check-folder"]) == folder
    assert any("duplicate job name" in line for line in folder)


def printed(output: str) -> list[str]:
    """The problems a hook printed: `path:line:col: field: message` lines."""
    return [line for line in output.splitlines() if re.match(r"^jobs\.d/\S+:\d+:\d+: ", line)]


def test_a_good_file_passes(outcomes: dict[str, tuple[int, dict[str, str]]]) -> None:
    code, out = outcomes["good"]
    assert code == 0, out["all"]
    assert out["all"].count("Passed") == 2, out["all"]
