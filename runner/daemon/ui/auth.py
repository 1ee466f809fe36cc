"""Who may see the dashboard: the control token (header, login URL, then a cookie) and CSRF.

Over the unix socket its file mode decides, as for the rest of the control API. Over TCP
a request needs `Authorization: Bearer <token>` or the session cookie; `/ui/?token=...`
(the URL `ductape-runner ui` prints) sets that cookie and redirects to the same URL without
the token, so it stays out of the history and the address bar. The cookie holds an HMAC
of the token, not the token. POSTs also need the page's CSRF value and, when the browser
sends one, an Origin of this host.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

COOKIE = "ductape_runner_ui"
Handler = Callable[[Request], Awaitable[Response]]


class UiAuth:
    """Checks one request; `token` None means TCP carries no dashboard (unix socket only)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None
        self.csrf = secrets.token_urlsafe(24)  # per daemon start; only shown to signed-in pages

    def session(self) -> str:
        assert self._token is not None
        return hmac.new(self._token, b"ductape-runner ui session", hashlib.sha256).hexdigest()

    def signed_in(self, request: Request) -> bool:
        if over_unix(request):
            return True
        if self._token is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session().encode())

    def login_redirect(self, request: Request) -> Response | None:
        """For `?token=...`: the cookie and a redirect without it, or None (a wrong token)."""
        given = request.query_params.get("token", "")
        if self._token is None or not hmac.compare_digest(given.encode(), self._token):
            return None
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urllib.parse.urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, self.session(), path="/ui", httponly=True, samesite="strict", secure=False
        )
        return response

    def post_allowed(self, request: Request, form_csrf: str) -> bool:
        """The page's CSRF value, and no foreign Origin (SameSite=Strict is the third wall)."""
        if not hmac.compare_digest(form_csrf.encode(), self.csrf.encode()):
            return False
        origin = request.headers.get("origin")
        if origin is None or over_unix(request):
            return True
        return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


def over_unix(request: Request) -> bool:
    """Same rule as runner.daemon.control_server: no peer address means the unix socket."""
    server, client = request.scope.get("server"), request.scope.get("client")
    return server is None or server[1] is None or client is None
