"""Settings: flags over environment over systemd credentials over the TOML config file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.settings import Settings, SettingsError, control_socket_path, load_settings


def test_flags_beat_environment_beat_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'jobs_dir = "/from/file"\nstate = "/file.sqlite3"\nbase_url = "http://file"\nproduct = "file"\n'
    )
    monkeypatch.setenv("DUCTAPE_RUNNER_STATE", "/env.sqlite3")
    monkeypatch.setenv("DUCTAPE_RUNNER_BASE_URL", "http://env")
    s = load_settings(config, environ={}, base_url="http://flag")
    assert (str(s.jobs_dir), s.state, s.base_url, s.product) == (
        "/from/file",
        "/env.sqlite3",
        "http://flag",
        "file",
    )


def test_the_access_token_comes_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "DUCTAPE_RUNNER_ACCESS_TOKEN").write_text("token-from-credential\n")
    s = load_settings(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert s.access_token.get_secret_value() == "token-from-credential"
    assert "token-from-credential" not in repr(s)


def test_an_unknown_setting_in_the_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('jobs_dri = "typo"\n')
    with pytest.raises(SettingsError, match="jobs_dri"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        ("/x.sock", {"RUNTIME_DIRECTORY": "/run/r"}, "/x.sock"),
        (None, {"RUNTIME_DIRECTORY": "/run/ductape-runner"}, "/run/ductape-runner/control.sock"),
        (None, {"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/ductape-runner/control.sock"),
        (None, {}, f"/tmp/ductape-runner-{os.getuid()}/control.sock"),  # a private folder
    ],
)
def test_the_control_socket_defaults_to_the_runtime_directory(
    configured: str | None, environ: dict[str, str], expected: str
) -> None:
    assert control_socket_path(Settings(control_socket=configured), environ) == expected
