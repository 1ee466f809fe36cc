"""The runner's error tree; every message is built from typed fields.

RunnerError
├── JobFileError        a job file is unreadable, malformed or invalid (path:line:col: field: msg)
├── ScheduleError       a schedule cannot produce fire times (impossible cron, bad zone)
├── SecretError         a ${env:} / ${file:} / ${credential:} reference cannot be resolved
├── CredentialsMissing  `run` without the Ductape credentials it needs
└── DuctapeError        a call to Ductape failed (see runner.ductape for its subclasses)
"""

from __future__ import annotations

from dataclasses import dataclass


class RunnerError(Exception):
    """Base of every error the runner raises on purpose.

    Problems with job files are not raised: the loader returns them as Problem values
    (path:line:col: field: message), so one bad file never stops the others.
    """


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one job file, located as precisely as the source allows."""

    path: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )

    def as_dict(self) -> dict[str, str | int]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class ScheduleError(RunnerError, ValueError):
    """A schedule expression cannot be turned into fire times."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SecretError(RunnerError):
    """A secret reference cannot be resolved; the message never holds the secret itself."""

    def __init__(self, reference: str, reason: str, field: str | None = None) -> None:
        self.reference = reference
        self.reason = reason
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"{where}secret reference {reference}: {reason}")

    def at(self, field: str) -> SecretError:
        """The same error, naming the field of the job that holds the reference."""
        return SecretError(self.reference, self.reason, field)


class CredentialsMissing(RunnerError):
    """`run` needs Ductape credentials; the message names the settings, never a value."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        variables = ", ".join(f"DUCTAPE_RUNNER_{n.upper()}" for n in names)
        super().__init__(
            f"missing Ductape credentials: {', '.join(names)}; set {variables} (environment,"
            " $CREDENTIALS_DIRECTORY or the config file), or run with --dry-run or --emulator"
        )
