"""The systemd unit: its key directives, and systemd-analyze's verdict where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "ductape-runner.service"
BINARY = Path("/usr/local/bin/ductape-runner")
MAX_EXPOSURE = 2.0
SHUTDOWN_GRACE_S = 30  # Settings.shutdown_grace_s default


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of (key, value) in order: units repeat keys, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


SERVICE = parse_unit(UNIT.read_text())["Service"]


def values(key: str) -> list[str]:
    return [v for k, v in SERVICE if k == key]


def one(key: str) -> str:
    found = values(key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


def environment() -> dict[str, str]:
    pairs = (item.split("=", 1) for line in values("Environment") for item in line.split())
    return dict(pairs)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("ExecStartPre", "-/usr/local/bin/ductape-runner check"),
        ("ExecStart", "/usr/local/bin/ductape-runner run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "ductape-runner"),
        ("RuntimeDirectory", "ductape-runner"),
        ("ConfigurationDirectory", "ductape-runner"),
        ("LoadCredential", "DUCTAPE_RUNNER_ACCESS_TOKEN:/etc/ductape-runner/access-token"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
    ],
)
def test_the_unit_sets(key: str, value: str) -> None:
    assert one(key) == value


def test_the_environment_points_at_the_managed_directories() -> None:
    env = environment()
    assert env["DUCTAPE_RUNNER_JOBS_DIR"] == "/etc/ductape-runner/jobs.d"
    assert env["DUCTAPE_RUNNER_STATE"] == "/var/lib/ductape-runner/state.sqlite3"
    assert env["DUCTAPE_RUNNER_CONTROL_SOCKET"] == "/run/ductape-runner/control.sock"


def test_syscalls_are_limited_to_system_service_without_privileged_or_resources() -> None:
    assert values("SystemCallFilter") == ["@system-service", "~@privileged @resources"]


def test_systemd_waits_longer_than_the_shutdown_grace() -> None:
    assert int(one("TimeoutStopSec")) > SHUTDOWN_GRACE_S


def test_outbound_internet_stays_open_for_ductape() -> None:
    assert values("IPAddressDeny") == []
    assert values("PrivateNetwork") == []


def _analyze(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze on a copy of the unit whose program path exists here.

    verify checks that ExecStart= binaries exist; the copy points at this checkout's
    installed console script instead of /usr/local/bin, and keeps the unit's name.
    """
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    script = Path(sys.executable).with_name("ductape-runner")
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(str(BINARY), str(script)))
    return subprocess.run(
        [tool, *args, str(copy)], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    proc = _analyze(tmp_path, "verify")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


def test_systemd_analyze_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    proc = _analyze(tmp_path, "security", "--offline=true", "--no-pager")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if match is None and "--offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE
