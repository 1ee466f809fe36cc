"""The README's commands work as written: its install steps and its read-only commands.

The install steps run with /etc and /usr/share mapped into a temporary folder; commands
that only read (check, next, schema, --help) then run against that layout, the repository
checkout's own files, or both.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SAFE = {"check", "next", "schema"}
PROGRAMS = {"ductape-runner", ".venv/bin/ductape-runner"}
ROOTS = ("/etc/", "/usr/share/")


def sh_blocks(text: str = README) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """One command per line, its trailing comment removed (no line in the README continues)."""
    lines = (line.split("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def safe_commands() -> list[str]:
    """The README's ductape-runner commands that only read: check, next, schema, --help."""
    found = []
    for block in sh_blocks():
        for line in commands(block):
            words = shlex.split(line)
            if words[0] in PROGRAMS and (words[1] in SAFE or "--help" in words):
                found.append(line)
    return found


def install_block() -> str:
    section = README.split("### Install", 1)[1]
    return sh_blocks(section)[0]


def mapped(text: str, root: Path) -> str:
    for prefix in ROOTS:
        text = text.replace(prefix, f"{root}{prefix}")
    return text


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's `install` steps (bar the token read from stdin), under a fake root."""
    root = tmp_path_factory.mktemp("root")
    steps = [c for c in commands(install_block()) if c.startswith("install ")]
    steps = [c for c in steps if "/dev/stdin" not in c and "/etc/systemd/" not in c]
    assert len(steps) >= 4, steps
    for step in steps:
        proc = subprocess.run(
            ["bash", "-c", mapped(step, root)], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{step}: {proc.stderr}"
    return root


def test_the_install_steps_install_the_config_file_and_it_loads(installed: Path) -> None:
    config = installed / "etc/ductape-runner/config.toml"
    assert config.is_file()
    proc = run_cli(["check", "--config", str(config), "jobs.d"], ROOT)
    assert proc.returncode == 0, proc.stderr


def test_the_units_documentation_is_installed(installed: Path) -> None:
    unit = (ROOT / "systemd" / "ductape-runner.service").read_text()
    docs = re.findall(r"^Documentation=(.+)$", unit, flags=re.MULTILINE)
    assert docs
    for url in docs[0].split():
        if url.startswith("file://"):
            assert (installed / url.removeprefix("file:///")).is_file(), url
        else:
            assert url.startswith(("https://", "man:")), url


def test_every_installed_jobs_schema_modeline_resolves(installed: Path) -> None:
    jobs = sorted((installed / "etc/ductape-runner/jobs.d").iterdir())
    assert len(jobs) == len(list((ROOT / "jobs.d").iterdir()))
    for job in jobs:
        first = job.read_text().splitlines()[0]
        match = re.search(r"(?:\$schema=|#:schema )(\S+)", first)
        assert match, f"{job.name}: no schema modeline"
        assert (job.parent / match[1]).resolve().is_file(), f"{job.name}: {match[1]}"


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_the_readme_shows_the_safe_commands_this_test_runs() -> None:
    shown = safe_commands()
    assert "ductape-runner check /etc/ductape-runner/jobs.d" in shown  # "Day to day"
    assert {shlex.split(c)[1] for c in shown} >= SAFE
    assert any("--help" in c for c in shown)


@pytest.mark.parametrize("command", safe_commands())
def test_a_readme_command_works_as_written(command: str, installed: Path, tmp_path: Path) -> None:
    words = shlex.split(mapped(command, installed))
    if words[0].startswith(".venv/"):
        # Run in the checkout: a scratch copy of its jobs.d, so no state file of it is read.
        shutil.copytree(ROOT / "jobs.d", tmp_path / "jobs.d")
    # else the installed command, run from a shell anywhere: an empty folder.
    proc = run_cli(words[1:], tmp_path)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"


def test_the_settings_tables_name_every_setting() -> None:
    named = set(re.findall(r"^\| `([a-z_]+)`", README, flags=re.MULTILINE))
    named |= set(re.findall(r"^\| `[a-z_]+`, `([a-z_]+)`", README, flags=re.MULTILINE))
    named |= set(re.findall(r"^\| `[a-z_]+`, `[a-z_]+`, `([a-z_]+)`", README, flags=re.MULTILINE))
    assert set(Settings.model_fields) <= named


def test_the_settings_table_is_one_table() -> None:
    section = README.split("### Settings", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\|.*\|$\n?", section, flags=re.MULTILINE)
    table = "".join(rows)
    assert table in section, "a blank line splits the settings table"
