"""`ductape-runner ui`: the login URL of the running daemon's dashboard.

Asks the daemon over its unix socket where its TCP listener is (the port may have been
chosen at start), and adds the control token, as Jupyter prints its URL.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import TextIO

import httpx

from runner.cli.ctl import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, TIMEOUT_S
from runner.settings import TOKEN_FILE


def login_url(tcp: str, token: str) -> str:
    return f"http://{tcp}/ui/?{urllib.parse.urlencode({'token': token})}"


def print_login_url(
    socket: str, token: str | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """`token` None: read the control.token file beside `socket`."""
    transport = httpx.HTTPTransport(uds=socket)
    try:
        with httpx.Client(
            transport=transport, base_url="http://ductape-runner", timeout=TIMEOUT_S
        ) as client:
            response = client.get("/ui/where")
    except (httpx.TransportError, OSError) as exc:
        print(f"error: cannot reach the daemon at {socket}: {exc}", file=err)
        return EXIT_UNREACHABLE
    tcp = response.json().get("tcp") if response.is_success else None
    if tcp is None:
        print(
            "error: the daemon serves the dashboard over TCP only with control_tcp set"
            " (run --control-tcp 127.0.0.1:9464)",
            file=err,
        )
        return EXIT_REFUSED
    if token is None:
        try:
            token = (Path(socket).parent / TOKEN_FILE).read_text().strip()
        except OSError as exc:
            print(f"error: cannot read the control token: {exc.strerror or exc}", file=err)
            return EXIT_REFUSED
    print(login_url(tcp, token), file=out)
    return EXIT_OK
