"""The `ductape-runner` command line: one subcommand per operator task."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from runner import __version__
from runner.errors import Problem, RunnerError
from runner.jobs import parallel
from runner.jobs.loader import Defaults, FolderResult, Limits, load_folder
from runner.settings import Settings, SettingsError, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


STATE_HELP = "state database: a SQLite file, or a postgresql:// DSN (replicas)"


def _config(parser: argparse.ArgumentParser) -> None:
    _paths(parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="TOML config file (default /etc/ductape-runner/config.toml if present)",
    ))  # fmt: skip


def _paths(action: argparse.Action, kind: str = "file") -> None:
    """Mark an argument as a file or folder for the completion scripts (see cmd_completion)."""
    action.complete = kind  # type: ignore[attr-defined]


def _folder(parser: argparse.ArgumentParser) -> None:
    """--config, --jobs-dir and --state: what reads the jobs folder and the state database."""
    _config(parser)
    _paths(
        parser.add_argument("--jobs-dir", type=Path, metavar="DIR", help="folder of job files"),
        "dir",
    )
    parser.add_argument("--state", metavar="PATH|DSN", help=STATE_HELP)


def _daemon(parser: argparse.ArgumentParser) -> None:
    """Options of the running daemon (`run` and `demo`)."""
    _folder(parser)
    _paths(parser.add_argument("--socket", metavar="PATH", help="control API unix socket"))
    parser.add_argument(
        "--control-tcp", metavar="[HOST:]PORT",
        help="also serve the control API (and /metrics) over TCP, e.g. 127.0.0.1:9464; "
        "'' turns it off",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="default info"
    )


def _control(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that talk to a running daemon's control API."""
    _config(parser)
    _paths(parser.add_argument(
        "--socket", metavar="PATH", help="control socket (default: the daemon's, as configured)"
    ))  # fmt: skip
    parser.add_argument("--url", help="control API over TCP instead, e.g. http://127.0.0.1:9464")
    parser.add_argument(
        "--json", action="store_true", default=None,
        help="print JSON (the default when stdout is not a terminal)",
    )  # fmt: skip


SHARED_STATE_COMMANDS = ("status", "history")  # also read the replicas' database (--state)
CONTROL_COMMANDS = (
    ("status", "jobs and their state (all, or one JOB)"),
    ("history", "recent occurrences of JOB"),
    ("trigger", "run JOB now"),
    ("pause", "stop scheduling JOB until resumed"),
    ("resume", "schedule JOB again"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ductape-runner", description="Declarative job runner daemon for Ductape."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate job files; exit 1 on any problem")
    _config(check)
    _paths(
        check.add_argument(
            "--jobs-dir", type=Path, metavar="DIR", help="checked when no PATH is given"
        ),
        "dir",
    )
    _paths(check.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="files or folders (default: --jobs-dir)"
    ))  # fmt: skip
    check.add_argument(
        "--format", choices=("text", "github", "json"), default="text",
        help="text (default), GitHub Actions annotations, or a JSON array",
    )  # fmt: skip
    check.set_defaults(handler=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of a job file")
    schema.set_defaults(handler=cmd_schema, settings=False)

    run = sub.add_parser("run", help="run the daemon: watch the jobs folder and run jobs")
    _daemon(run)
    run.add_argument("--base-url", metavar="URL", help="Ductape's API")
    run.add_argument(
        "--dry-run", action="store_true", default=None, help="log operations, call nothing"
    )
    run.add_argument(
        "--emulator", action="store_true", help="run against the built-in Ductape emulator"
    )
    _emulator_port(run)
    run.add_argument(
        "--reset-state",
        action="store_true",
        help="move an empty or unreadable state file aside and start afresh",
    )
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="run jobs.d against the built-in emulator (quick start)")
    _daemon(demo)
    _emulator_port(demo)
    demo.set_defaults(handler=cmd_demo)

    emu = sub.add_parser("emulator", help="serve the Ductape emulator (SDK proxy) for tests")
    _emulator_args(emu)
    emu.set_defaults(handler=cmd_emulator, settings=False)

    plan = sub.add_parser("plan", help="print what the daemon would change now, changing nothing")
    _folder(plan)
    plan.set_defaults(handler=cmd_plan)

    from runner.cli.diffcmd import add_parser as add_diff

    add_diff(sub, _config)

    for name, text in CONTROL_COMMANDS:
        ctl = sub.add_parser(name, help=text)
        _control(ctl)
        ctl.add_argument("job", nargs="?" if name == "status" else None, help="job name")
        if name == "history":
            ctl.add_argument(
                "--limit", type=_positive, default=20, metavar="N", help="how many (default 20)"
            )
        if name in SHARED_STATE_COMMANDS:
            ctl.add_argument(
                "--state", metavar="DSN",
                help="read the state the replicas share from this postgresql:// DSN "
                "(read-only, no daemon asked): the whole cluster's view",
            )  # fmt: skip
        ctl.set_defaults(handler=cmd_ctl, ctl_command=name)

    ui = sub.add_parser("ui", help="print the login URL of the running daemon's web dashboard")
    _config(ui)
    _paths(ui.add_argument(
        "--socket", metavar="PATH", help="control socket (default: the daemon's, as configured)"
    ))  # fmt: skip
    ui.set_defaults(handler=cmd_ui)

    nxt = sub.add_parser("next", help="show a job's next fire times, as the daemon computes them")
    _folder(nxt)
    nxt.add_argument("job", help="job name (in the jobs folder) or a job file")
    nxt.add_argument("-n", type=_positive, default=5, metavar="N", help="how many (default 5)")
    nxt.add_argument(
        "--after", metavar="INSTANT", help="ISO 8601 instant to start from (default now)"
    )
    nxt.add_argument("--json", action="store_true", help="print a JSON array of ISO 8601 times")
    nxt.set_defaults(handler=cmd_next)

    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    comp.set_defaults(handler=cmd_completion, settings=False)
    return parser


SHELLS = ("bash", "zsh", "fish")


def _emulator_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--emulator-port", type=int, default=0, metavar="PORT",
        help="loopback port of the built-in emulator (default: a free one)",
    )  # fmt: skip


def _positive(text: str) -> int:
    """A count of at least 1: `-n 0` or `-n -3` is a usage error, not an empty answer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    paths = args.paths or [settings.jobs_dir]
    missing = [p for p in paths if not p.exists()]
    problems = [Problem(str(p), 0, 0, "", "no such file or folder") for p in missing]
    limits = Limits(max_file_bytes=settings.max_file_bytes)
    from runner.jobs.secrets import SecretPolicy

    policy = SecretPolicy.from_settings(settings)
    defaults = Defaults(product=settings.product, env=settings.env, secrets=policy)
    workers = parallel.workers_for(settings.parse_workers)
    result = _load_checked([p for p in paths if p.exists()], limits, defaults, workers)
    problems += result.all_problems()
    jobs = sum(len(f.jobs) for f in result.files if f.ok)
    _print_problems(problems, args.format)
    if args.format == "text":
        print(f"{len(result.files)} files, {jobs} valid jobs, {len(problems)} problems",
              file=sys.stderr)  # fmt: skip
    return 1 if problems else 0


def _load_checked(
    paths: list[Path], limits: Limits, defaults: Defaults, workers: int
) -> FolderResult:
    """`load_folder`, with parse workers beside this process when 1 MiB or more of files
    is to be read (`ExecStartPre=ductape-runner check` before a large folder's start)."""
    from runner.jobs.loader import discover, load_file, mark_duplicate_names, read_bounded
    from runner.jobs.yamlsrc import SourceError

    files = [f for path in paths for f in (discover(path) if path.is_dir() else [path])]
    if len(set(files)) < len(files):  # a file named twice: its jobs clash, as they did
        return load_folder(paths, limits, defaults)
    contents: list[tuple[str, bytes]] = []
    for file in files:
        try:
            contents.append((str(file), read_bounded(file, limits)))
        except SourceError:
            continue  # load_file reports it, below
    parsed = parallel.load_files(contents, limits, defaults, workers=workers)
    result = FolderResult([parsed.get(str(f)) or load_file(f, limits, defaults) for f in files])
    mark_duplicate_names(result.files)
    return result


def _print_problems(problems: list[Problem], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([p.as_dict() for p in problems], indent=2))
        return
    from runner.cli.visible import github_data, github_property, visible

    for p in problems:
        if fmt == "github":
            text = f"{p.field}: {p.message}" if p.field else p.message
            where = f"file={github_property(p.path)},line={p.line},col={p.column}"
            print(f"::error {where}::{github_data(text)}")
        else:
            print(visible(str(p)))  # a file name may hold ESC or a newline


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from runner.jobs.schema import render

    sys.stdout.write(render())
    return 0


def _emulator_args(parser: argparse.ArgumentParser) -> None:
    from runner.ductape import emulator as emu

    demo = "(default: the demo value)"
    parser.add_argument(
        "--host", default=emu.DEFAULT_HOST, help="address to listen on (%(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=emu.DEFAULT_PORT, help="port to listen on (%(default)s)"
    )
    parser.add_argument(
        "--workspace-id", default=emu.DEMO_WORKSPACE_ID, help=f"workspace it accepts {demo}"
    )
    parser.add_argument("--user-id", default=emu.DEMO_USER_ID, help=f"user it accepts {demo}")
    parser.add_argument(
        "--public-key", default=emu.DEMO_PUBLIC_KEY, help=f"public key it accepts {demo}"
    )
    parser.add_argument(
        "--access-token", default=emu.DEMO_ACCESS_TOKEN, help=f"access token it accepts {demo}"
    )


def cmd_emulator(args: argparse.Namespace, settings: Settings) -> int:
    from runner.ductape import emulator as emu

    emu.run_emulator(
        args.host, args.port, args.workspace_id, args.user_id, args.public_key, args.access_token
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from runner.daemon.logs import configure
    from runner.daemon.service import Daemon
    from runner.jobs.secrets import SecretRegistry

    if args.dry_run:
        settings = settings.model_copy(update={"dry_run": True})
    registry = SecretRegistry()
    configure(registry, json=settings.log_json, level=settings.log_level)
    daemon = Daemon(
        settings,
        dict(os.environ),
        registry=registry,
        emulator=args.emulator,
        emulator_port=args.emulator_port,
        reset_state=getattr(args, "reset_state", False),
    )
    return _run_loop(daemon.run(), settings.event_loop)


def _run_loop(main: Coroutine[Any, Any, int], choice: str) -> int:
    """Run the daemon on uvloop when installed (issue 12: less CPU per occurrence in the
    loop's own work), unless `event_loop = "asyncio"`; `uvloop` insists on it."""
    import asyncio

    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise SystemExit("event_loop = uvloop, but uvloop is not installed") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    args.emulator, args.dry_run = True, False
    if args.state is None and "DUCTAPE_RUNNER_STATE" not in os.environ:
        settings = settings.model_copy(update={"state": ".demo-state.sqlite3"})
    return cmd_run(args, settings)


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.planning import print_plan

    return print_plan(settings)


def cmd_ctl(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "state", None) is not None:
        return _shared_state(args)
    from runner.cli.ctl import run_ctl
    from runner.settings import client_control_token, control_socket_path

    socket = args.socket or control_socket_path(settings, dict(os.environ), client=True)
    token = client_control_token(settings, dict(os.environ)) if args.url else None
    return run_ctl(
        args.ctl_command,
        args.job,
        socket=socket,
        url=args.url,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
        limit=getattr(args, "limit", 20),
        token=token,
    )


def _shared_state(args: argparse.Namespace) -> int:
    """`status`/`history --state DSN`: the database itself, not a daemon's view of it."""
    from runner.cli.shared_state import run_shared

    if args.socket or args.url:
        print(
            f"ductape-runner {args.command}: --state reads the database, --socket and --url "
            "ask a daemon: give one or the other",
            file=sys.stderr,
        )
        return 2
    return run_shared(
        args.ctl_command,
        args.job,
        args.state,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
        limit=getattr(args, "limit", 20),
    )


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.uicmd import print_login_url
    from runner.settings import control_socket_path

    socket = args.socket or control_socket_path(settings, dict(os.environ), client=True)
    configured = settings.control_token
    return print_login_url(socket, configured.get_secret_value() if configured else None)


def cmd_next(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.nextcmd import NextError, upcoming
    from runner.cli.visible import visible

    try:
        lines = upcoming(args.job, settings, n=args.n, after=args.after, as_json=args.json)
    except NextError as exc:
        print(f"ductape-runner next: {visible(str(exc))}", file=sys.stderr)
        return 1
    print("\n".join(lines) if args.json else visible("\n".join(lines), keep="\n"))
    return 0


def cmd_completion(args: argparse.Namespace, settings: Settings) -> int:
    """Generated from this parser by shtab (imported here: it costs ~70 ms at start-up)."""
    import shtab

    parser = build_parser()
    kinds = {"file": shtab.FILE, "dir": shtab.DIRECTORY}
    for action in _all_actions(parser):
        if isinstance(getattr(action, "complete", None), str):
            action.complete = kinds[action.complete]  # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _all_actions(child)
    return found


def _settings(args: argparse.Namespace) -> Settings:
    if not getattr(args, "settings", True):
        return Settings.model_construct()  # commands that read no settings
    return load_settings(
        getattr(args, "config", None),
        environ=dict(os.environ),
        jobs_dir=getattr(args, "jobs_dir", None),
        state=getattr(args, "state", None),
        base_url=getattr(args, "base_url", None),
        control_socket=getattr(args, "socket", None) if args.command in DAEMONS else None,
        control_tcp=getattr(args, "control_tcp", None),
        log_level=getattr(args, "log_level", None),
        credentials_directory=os.environ.get("CREDENTIALS_DIRECTORY"),
    )


DAEMONS = ("run", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, _settings(args))
    except SettingsError as exc:  # names the keys, never their values (issue 13)
        print(f"ductape-runner: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (RunnerError, OSError) as exc:
        print(f"ductape-runner: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
