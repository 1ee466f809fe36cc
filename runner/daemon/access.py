"""The daemon's Ductape credentials: required at start, and watched through refused calls."""

from __future__ import annotations

import structlog

from runner.ductape.client import Credentials, DuctapeError, is_auth_failure
from runner.errors import CredentialsMissing
from runner.jobs.secrets import SecretRegistry
from runner.settings import Settings

log = structlog.get_logger("runner.daemon")

AUTH_FAILURES = 3  # refused calls in a row before the daemon says it is not ready


class DuctapeAccess:
    """Credentials from the settings, and whether Ductape accepts them, as `Daemon` uses it."""

    settings: Settings
    registry: SecretRegistry
    auth_failures: int
    auth_error: str | None

    def _credentials(self) -> Credentials:
        s = self.settings
        token = s.access_token.get_secret_value()
        if token:
            self.registry.add(token)
        return Credentials(
            base_url=s.base_url,
            workspace_id=s.workspace_id,
            user_id=s.user_id,
            public_key=s.public_key,
            access_token=s.access_token,
        )

    def _require_credentials(self) -> None:
        """Refuse to start without them: every run would fail (issue 11, item 6)."""
        s = self.settings
        values = {
            "workspace_id": s.workspace_id,
            "user_id": s.user_id,
            "public_key": s.public_key,
            "access_token": s.access_token.get_secret_value(),
        }
        missing = [name for name, value in values.items() if not value.strip()]
        if missing:
            raise CredentialsMissing(missing)

    def _on_call(self, error: DuctapeError | None) -> None:
        """Count refused credentials in a row; not ready from AUTH_FAILURES, ready on success."""
        if error is not None and not is_auth_failure(error):
            return  # says nothing about the credentials
        if error is None:
            if self.auth_error is not None:
                log.info("ductape.authorised", after_failures=self.auth_failures)
            self.auth_failures, self.auth_error = 0, None
            return
        self.auth_failures += 1
        if self.auth_failures == AUTH_FAILURES:
            self.auth_error = (
                f"Ductape refused the credentials {self.auth_failures} times in a row"
                f" ({error}): check DUCTAPE_RUNNER_WORKSPACE_ID, DUCTAPE_RUNNER_USER_ID,"
                " DUCTAPE_RUNNER_PUBLIC_KEY and DUCTAPE_RUNNER_ACCESS_TOKEN"
            )
            log.error("ductape.unauthorised", failures=self.auth_failures, error=str(error))
