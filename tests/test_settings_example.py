"""systemd/config.example.toml lists every setting, with the model's own defaults, and loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runner.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "systemd" / "config.example.toml"
SETTING = re.compile(r"^#?([a-z_]+) = ")


def setting_lines() -> dict[str, str]:
    """name -> its line, commented (`#name = default`) or not."""
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = SETTING.match(line)
        if match:
            assert match[1] not in found, f"{match[1]} is listed twice"
            found[match[1]] = line
    return found


def uncommented() -> str:
    return "\n".join(line.removeprefix("#") for line in setting_lines().values()) + "\n"


def check_with(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTAPE_RUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "runner", "check", "--config", str(config), "jobs.d"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_it_lists_every_setting_of_the_model() -> None:
    assert set(setting_lines()) == set(Settings.model_fields)


# Settings whose default is None (product, control_tcp, ...) show an example instead.
WITH_DEFAULT = sorted(n for n, f in Settings.model_fields.items() if f.default is not None)


@pytest.mark.parametrize("name", WITH_DEFAULT)
def test_a_commented_setting_shows_the_models_default(name: str) -> None:
    line = setting_lines()[name].removeprefix("#")
    value = tomllib.loads(line)[name]
    shown = Settings.model_validate({name: value}).model_dump()[name]
    model = Settings.model_construct().model_dump()[name]
    assert shown == model, f"{line!r}: the model's default is {model!r}"


def test_the_cli_reads_the_file_as_shipped() -> None:
    proc = check_with(EXAMPLE)
    assert proc.returncode == 0, proc.stderr


def test_the_cli_reads_the_file_with_every_line_uncommented(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(uncommented())
    proc = check_with(config)
    assert proc.returncode == 0, proc.stderr
