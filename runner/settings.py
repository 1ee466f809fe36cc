"""Runner settings: environment DUCTAPE_RUNNER_*, an optional TOML file, then CLI flags."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("/etc/ductape-runner/config.toml")


class Settings(BaseSettings):
    """Everything the daemon and the CLI read from the outside world, read once."""

    model_config = SettingsConfigDict(
        env_prefix="DUCTAPE_RUNNER_", extra="forbid", case_sensitive=False
    )

    jobs_dir: Path = Path("jobs.d")
    state: str = "ductape-runner.sqlite3"  # a SQLite path, or a postgresql:// DSN (replicas)
    lease_s: float = Field(default=30.0, ge=1)  # PostgreSQL: how long a claim lasts unrenewed
    replica_id: str | None = None  # PostgreSQL: default host-pid-random
    base_url: str = "https://api.ductape.app"
    workspace_id: str = ""
    user_id: str = ""
    public_key: str = ""
    access_token: SecretStr = SecretStr("")
    product: str | None = None
    env: str | None = None
    max_file_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Processes that parse job files besides the daemon's, when 1 MiB or more changed at
    # once (a first start): None is one per core (at most 8); 0 parses in the daemon alone.
    parse_workers: int | None = Field(default=None, ge=0, le=64)
    history_retention_days: int = Field(default=30, ge=1)
    max_concurrent_runs: int = Field(default=64, ge=1)
    # Connections to Ductape (aiohttp's pool), also the number of calls in flight to it.
    max_connections: int = Field(default=16, ge=1, le=256)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    control_socket: str | None = None  # default: the runtime directory (see control_socket_path)
    control_tcp: str | None = None  # e.g. "127.0.0.1:9464"; off by default
    # Bearer token the TCP listener requires; unset: generated at start into TOKEN_FILE
    # beside the control socket (0600). A systemd credential of this name also sets it.
    control_token: SecretStr | None = None
    credentials_directory: str | None = None
    # What job files may read (issue 13 item 11): ${file:} only under these folders (and
    # credentials_directory), ${env:} only for these names or NAME_* prefixes.
    secret_dirs: list[Path] = []
    secret_env: list[str] = []
    dry_run: bool = False
    quiet_period_s: float = Field(default=0.25, ge=0, le=5)
    resync_interval_s: float = Field(default=60.0, ge=1)
    poll: bool = False  # rescan by polling (NFS and similar mounts)
    empty_folder_confirm_s: float = Field(default=300.0, ge=0)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    log_json: bool | None = None  # default: JSON when stderr is not a terminal
    # The daemon's event loop: uvloop (libuv) where installed, else asyncio's own.
    event_loop: str = Field(default="auto", pattern="^(auto|uvloop|asyncio)$")

    @field_validator("control_tcp", mode="before")
    @classmethod
    def _tcp_address(cls, value: object) -> object:
        """'' (e.g. `Environment=DUCTAPE_RUNNER_CONTROL_TCP=` in a drop-in) turns TCP off;
        anything else must be [HOST:]PORT, so a typo is reported under this setting's name."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        port = value.rpartition(":")[2]
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r}: expected [HOST:]PORT, e.g. 127.0.0.1:9464 or 9464")
        return value

    @field_validator("secret_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        relative = [str(p) for p in value if not p.is_absolute()]
        if relative:
            raise ValueError(f"folders must be absolute paths, not {relative}")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not _ENV_PATTERN.fullmatch(n)]
        if bad:
            raise ValueError(f"expected names or prefixes like JOB_*, not {bad}")
        return value


_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?|\*")


def load_settings(
    config: Path | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from flags (overrides) over environment over the config file.

    systemd credentials: a file in $CREDENTIALS_DIRECTORY named like the environment
    variable (e.g. DUCTAPE_RUNNER_ACCESS_TOKEN) is read as that setting.
    """
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None:
        with path.open("rb") as handle:
            tomllib.load(handle)  # fail early, with the file's own syntax error
    credentials = (environ or {}).get("CREDENTIALS_DIRECTORY")

    class _Sourced(Settings):
        model_config = SettingsConfigDict(toml_file=path, secrets_dir=credentials, title="settings")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = TomlConfigSettingsSource(settings_cls)
            return (init_settings, env_settings, file_secret_settings, toml)

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return _Sourced(**clean)
    except ValidationError as exc:
        raise SettingsError(path, exc) from None


class SettingsError(ValueError):
    """Settings that do not validate: each key and what is wrong, never the value given
    (a misspelt `acces_token` would otherwise print the token on stderr)."""

    def __init__(self, config: Path | None, exc: ValidationError) -> None:
        self.problems = [
            (".".join(str(part) for part in error["loc"]) or "settings", error["msg"])
            for error in exc.errors(include_input=False, include_url=False)
        ]
        where = f" ({config})" if config is not None else ""
        lines = "; ".join(f"{key}: {message}" for key, message in self.problems)
        super().__init__(f"invalid settings{where}: {lines}")


SYSTEMD_SOCKET = Path("/run/ductape-runner/control.sock")


def control_socket_path(
    settings: Settings, environ: dict[str, str], *, client: bool = False
) -> str:
    """The control socket: configured, else `control.sock` in the runtime folder.

    A client (`ductape-runner status`) run by an operator outside the service also finds
    the socket the systemd unit creates.
    """
    if settings.control_socket:
        return settings.control_socket
    if client and not environ.get("RUNTIME_DIRECTORY") and SYSTEMD_SOCKET.exists():
        return str(SYSTEMD_SOCKET)
    return str(runtime_dir(environ) / "control.sock")


def runtime_dir(environ: dict[str, str]) -> Path:
    """A folder private to the daemon's user: systemd's RuntimeDirectory, else
    $XDG_RUNTIME_DIR/ductape-runner, else /tmp/ductape-runner-<uid> (made 0700 and
    checked to be ours before use, see runner.daemon.control_server.private_dir)."""
    if environ.get("RUNTIME_DIRECTORY"):
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "ductape-runner"
    return Path(f"/tmp/ductape-runner-{os.getuid()}")


TOKEN_FILE = "control.token"


def control_token_path(
    settings: Settings, environ: dict[str, str], *, client: bool = False
) -> Path:
    """Where the daemon writes a generated control token: beside its control socket."""
    return Path(control_socket_path(settings, environ, client=client)).parent / TOKEN_FILE


def client_control_token(settings: Settings, environ: dict[str, str]) -> str | None:
    """The token for `--url`: the control_token setting (config, environment or
    credential), else the file the daemon generated, if this user may read it."""
    if settings.control_token is not None:
        return settings.control_token.get_secret_value()
    try:
        return control_token_path(settings, environ, client=True).read_text().strip() or None
    except OSError:
        return None
