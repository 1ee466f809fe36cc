"""System programs some tests drive (Debian's chromium, promtool, libfaketime): found or skipped.

`scripts/test-tools` installs them where it can; a test that needs one skips with the reason
when it is missing, unless RUNNER_REQUIRE_TOOLS=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRED = os.environ.get("RUNNER_REQUIRE_TOOLS") == "1"


def require_tool(name: str, package: str | None = None) -> str:
    """The path of program `name`, or skip (fail under RUNNER_REQUIRE_TOOLS=1) without it."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(
        f"{name} is not installed (Debian package {package or name}; "
        "scripts/test-tools installs it as root)"
    )


def require_faketime() -> str:
    """The path of libfaketime (Debian package faketime), or skip/fail as require_tool does."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if found:
        return str(found[0])
    missing(
        "libfaketime is not installed (Debian package faketime; scripts/test-tools installs it)"
    )


def missing(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it where CI requires every tool."""
    if REQUIRED:
        pytest.fail(f"RUNNER_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)
