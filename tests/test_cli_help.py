"""The command line documents itself: help for every option, no idle flags, completion scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import daemon_helpers
from tests.daemon_helpers import DaemonProcess, wait_for
from tests.emulator_fixture import RunningEmulator

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "check",
    "schema",
    "run",
    "demo",
    "emulator",
    "plan",
    "diff",
    "status",
    "history",
    "trigger",
    "pause",
    "resume",
    "next",
    "ui",
    "completion",
]
CONTROL = ("status", "history", "trigger", "pause", "resume")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return daemon_helpers.cli(*args, env={"COLUMNS": "100"}, cwd=cwd)


def entries_without_help(help_text: str) -> list[str]:
    """Option and argument lines of argparse's help that have no text beside or below them."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if indent not in (2, 4) or not line.strip() or line.strip() == "COMMAND":
            continue
        beside = len(re.split(r"\s{2,}", line.strip())) > 1
        below = i + 1 < len(lines) and len(lines[i + 1]) - len(lines[i + 1].lstrip()) >= 10
        if not (beside or below):
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_and_option_has_help(command: str) -> None:
    proc = cli(*[command] if command else [], "--help")
    assert proc.returncode == 0, proc.stderr
    assert "options:" in proc.stdout
    assert entries_without_help(proc.stdout) == [], proc.stdout


@pytest.mark.parametrize("command", CONTROL)
def test_commands_that_talk_to_the_daemon_refuse_flags_that_do_nothing_for_them(
    command: str,
) -> None:
    proc = cli(command, "some-job", "--jobs-dir", "a", "--state", "b", "--base-url", "c")
    assert proc.returncode == 2
    assert "unrecognized arguments" in proc.stderr
    # status and history take --state: a shared PostgreSQL state (test_status_shared_state)
    shared = command in ("status", "history")
    for flag in ("--jobs-dir", "--base-url", *(() if shared else ("--state",))):
        assert flag in proc.stderr


def test_plan_refuses_base_url() -> None:
    proc = cli("plan", "--base-url", "http://x")
    assert (proc.returncode, "unrecognized arguments: --base-url" in proc.stderr) == (2, True)


def test_the_daemons_state_option_says_it_takes_a_postgresql_dsn() -> None:
    assert "postgresql://" in cli("run", "--help").stdout


def test_run_takes_socket_control_tcp_and_log_level(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    flag_socket = tmp_path / "flag.sock"
    daemon = DaemonProcess(
        tmp_path,
        emulator,
        *("--socket", str(flag_socket), "--control-tcp", "127.0.0.1:0", "--log-level", "debug"),
        env={"DUCTAPE_RUNNER_LOG_LEVEL": "info"},
    )
    daemon.write_job("later.yaml", "kind: quota\ntag: q\nschedule: {cron: '0 0 1 1 *'}\n")
    daemon.start()
    try:
        listening = daemon.events("control.listening")[0]
        assert listening["unix_socket"] == str(flag_socket)
        assert listening["tcp"].startswith("127.0.0.1:")
        # The start logs no line per job (issue 12); a job added later does, at debug.
        daemon.write_job("added.yaml", "kind: quota\ntag: q\nschedule: {cron: '0 0 1 1 *'}\n")
        wait_for(lambda: daemon.events("job.upserted"))
        assert all(e["level"] == "debug" for e in daemon.events("job.upserted"))
    finally:
        assert daemon.stop() == 0


def test_bash_completion_is_valid_bash_and_completes_the_commands(tmp_path: Path) -> None:
    proc = cli("completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "ductape-runner.bash"
    script.write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    probe = (
        f"source {script}\n"
        'complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1));'
        ' COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; _shtab_ductape_runner;'
        " printf '%s\\n' \"${COMPREPLY[@]}\"; }\n"
        "complete_words ductape-runner ''\n"
        "echo ---\n"
        "complete_words ductape-runner run --co\n"
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    commands, _, run_options = out.stdout.partition("---\n")
    assert set(COMMANDS) <= set(commands.split()), out.stdout + out.stderr
    assert run_options.split() == ["--config", "--control-tcp"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_name_every_command(shell: str, tmp_path: Path) -> None:
    proc = cli("completion", shell)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert re.search(rf"\b{command}\b", proc.stdout)
    if shutil.which(shell):  # their own syntax check, where the shell is installed
        script = tmp_path / f"completion.{shell}"
        script.write_text(proc.stdout)
        assert subprocess.run([shell, "-n", str(script)], capture_output=True).returncode == 0


def test_completion_refuses_an_unknown_shell() -> None:
    proc = cli("completion", "tcsh")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
