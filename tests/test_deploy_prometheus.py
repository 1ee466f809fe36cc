"""deploy/prometheus and deploy/grafana: promtool checks the rules, runs their unit tests and
checks the scrape config; a real daemon serves every metric they read, in a form promtool
accepts, and its probes answer over TCP without a token as the Kubernetes probes need."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_helpers import DaemonProcess, wait_for
from tests.emulator_fixture import RunningEmulator
from tests.tool_helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "ductape-runner.json"
NOT_OURS = {"up"}  # Prometheus' own series, the only other metric the rules may read


def promtool(
    *args: str, cwd: Path = PROM, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run(
        [tool, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_the_alert_rules_pass_promtool_check_rules() -> None:
    proc = promtool("check", "rules", "alerts.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    proc = promtool("test", "rules", "alerts.test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_unit_tests_catch_a_rule_that_changed(tmp_path: Path) -> None:
    rules = (PROM / "alerts.yaml").read_text()
    assert rules.count("ductape_runner_runs_since_success >= 3") == 1
    (tmp_path / "alerts.yaml").write_text(
        rules.replace("runs_since_success >= 3", "runs_since_success >= 4")
    )
    shutil.copy(PROM / "alerts.test.yaml", tmp_path)
    proc = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "DuctapeRunnerJobNotSucceeding" in proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    rules = yaml.safe_load((PROM / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts.test.yaml").read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert fired == alerts
    assert quiet == alerts  # and a case where it does not fire


def test_the_scrape_config_passes_promtool_check_config() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert [j["job_name"] for j in config["scrape_configs"]] == ["ductape-runner"]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROM / "alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def metric_names(expr: str) -> set[str]:
    """Series names an expression reads: ductape_runner_* anywhere, any name before `{`."""
    names = set(re.findall(r"\bductape_runner_[a-z_]+\b", expr))
    return names | set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def test_the_dashboard_is_grafana_json_with_queries_on_every_panel() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "ductape-runner"
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_a_real_daemon_serves_every_metric_the_rules_and_dashboard_read(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    port = free_port()
    daemon = DaemonProcess(
        tmp_path, emulator, env={"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}"}
    )
    heartbeat = (ROOT / "jobs.d" / "heartbeat.yaml").read_text().replace("every: 10s", "every: 1s")
    daemon.write_job("heartbeat.yaml", heartbeat)
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.start()
        wait_for(lambda: daemon.events("run.finished"))
        # The probes deploy/kubernetes sets, over TCP and without the control token.
        for path in ("/healthz", "/readyz"):
            assert httpx.get(base + path, timeout=5).status_code == 200, path
        assert httpx.get(base + "/status", timeout=5).status_code == 401
        text = httpx.get(base + "/metrics", timeout=5).text
        # `kubectl exec ... -- ductape-runner status` (README, GitOps): no --socket, the
        # container's DUCTAPE_RUNNER_CONTROL_SOCKET finds it.
        status = subprocess.run(
            [sys.executable, "-m", "runner", "status", "--json"],
            env=daemon.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0 and "heartbeat" in status.stdout, status.stderr
    finally:
        daemon.stop()
    lint = promtool("check", "metrics", stdin=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    served |= {f.name for f in text_string_to_metric_families(text)}
    used = set().union(*map(metric_names, rule_expressions() + dashboard_expressions()))
    assert used - NOT_OURS <= served, sorted(used - NOT_OURS - served)
    # And the dashboard or the rules show every metric the daemon has.
    families = {f.name for f in text_string_to_metric_families(text)} - {
        n
        for n in served
        if n.endswith("_created")  # prometheus_client's creation times
    }
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
