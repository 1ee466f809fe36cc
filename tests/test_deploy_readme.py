"""The README's GitOps section: each command it shows is run here (or, for `ductape-runner`,
by tests/test_readme.py), and its tables name what deploy/ really holds."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.settings import Settings
from tests.test_readme import commands, safe_commands, sh_blocks
from tests.tool_helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
SECTION = (ROOT / "README.md").read_text().split("## GitOps", 1)[1].split("\n## ", 1)[0]
SHOWN = [line for block in sh_blocks(SECTION) for line in commands(block)]


def run(command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_section_shows_only_commands_these_tests_run() -> None:
    for command in SHOWN:
        program = shlex.split(command)[0]
        assert program in {".venv/bin/ductape-runner", "promtool", "kubectl"}, command
        if program == ".venv/bin/ductape-runner":
            assert command in safe_commands()  # tests/test_readme.py runs it as written


@pytest.mark.parametrize("command", [c for c in SHOWN if c.startswith("promtool ")])
def test_a_promtool_command_works_as_shown(command: str) -> None:
    require_tool("promtool", "prometheus")
    proc = run(command)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_kubectl_commands_work_as_shown_short_of_a_cluster(tmp_path: Path) -> None:
    require_tool("kubectl", "kubectl")
    create, render, apply = (c for c in SHOWN if c.startswith("kubectl "))
    (tmp_path / "access-token").write_text("token\n")
    proc = run(create, tmp_path)
    assert proc.returncode == 0, proc.stderr
    secret = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert {k.removeprefix("DUCTAPE_RUNNER_").lower() for k in secret["data"]} <= set(
        Settings.model_fields
    )
    proc = run(render)
    assert proc.returncode == 0 and "kind: Deployment" in proc.stdout, proc.stderr
    # `apply -k` needs a cluster: what it would apply is the same render.
    overlay = apply.rsplit(" -k ", 1)[1]
    assert overlay == render.split()[-1] and (ROOT / overlay / "kustomization.yaml").is_file()


def test_the_pre_commit_config_shown_uses_the_hooks_as_defined() -> None:
    (block,) = re.findall(r"^```yaml\n(.*?)^```", SECTION, flags=re.MULTILINE | re.DOTALL)
    shown = yaml.safe_load(block)["repos"][0]["hooks"]
    defined = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert [h["id"] for h in shown] == list(defined)
    for hook in shown:
        assert hook.get("args", defined[hook["id"]].get("args")) == defined[hook["id"]].get("args")


def test_the_tables_name_every_alert_and_every_variant() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert set(re.findall(r"`(DuctapeRunner\w+)`", SECTION)) == alerts
    variants = {
        str(p.parent.relative_to(ROOT))
        for p in (ROOT / "deploy/kubernetes").glob("overlays/*/kustomization.yaml")
    }
    variants |= {"deploy/kubernetes/base"}
    assert (
        set(re.findall(r"^\| `(deploy/kubernetes/[\w/-]+)`", SECTION, flags=re.MULTILINE))
        == variants
    )


def hook_output_shown() -> dict[str, list[str]]:
    """The README's failing commit: each hook's name and the problems printed under it."""
    (block,) = re.findall(r"stops with[^`]*```\n(.*?)^```", SECTION, flags=re.MULTILINE | re.DOTALL)
    hooks: dict[str, list[str]] = {}
    for line in block.splitlines():
        if line.startswith("ductape-runner check"):
            current = hooks.setdefault(line.split("...")[0], [])
        else:
            current.append(line)
    return hooks
