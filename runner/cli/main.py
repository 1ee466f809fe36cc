"""The `ductape-runner` command line: one subcommand per operator task."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from runner import __version__
from runner.errors import Problem, RunnerError
from runner.jobs.loader import Defaults, Limits, load_folder
from runner.settings import Settings, SettingsError, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--jobs-dir", type=Path, help="folder of job files")
    parser.add_argument("--state", help="SQLite path of the state database")
    parser.add_argument("--base-url", help="Ductape base URL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ductape-runner", description="Declarative job runner daemon for Ductape."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate job files; exit 1 on any problem")
    _common(check)
    check.add_argument("paths", nargs="*", type=Path, help="files or folders")
    check.add_argument("--format", choices=("text", "github", "json"), default="text")
    check.set_defaults(handler=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of a job file")
    schema.set_defaults(handler=cmd_schema)

    run = sub.add_parser("run", help="run the daemon: watch the jobs folder and run jobs")
    _common(run)
    run.add_argument(
        "--dry-run", action="store_true", default=None, help="log operations, call nothing"
    )
    run.add_argument(
        "--emulator", action="store_true", help="run against the built-in Ductape emulator"
    )
    run.add_argument(
        "--reset-state",
        action="store_true",
        help="move an empty or unreadable state file aside and start afresh",
    )
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="run jobs.d against the built-in emulator (quick start)")
    _common(demo)
    demo.set_defaults(handler=cmd_demo)

    emu = sub.add_parser("emulator", help="serve the Ductape emulator (SDK proxy) for tests")
    _emulator_args(emu)
    emu.set_defaults(handler=cmd_emulator)

    plan = sub.add_parser("plan", help="print what the daemon would change now, changing nothing")
    _common(plan)
    plan.set_defaults(handler=cmd_plan)

    for name, text in (
        ("status", "jobs and their state (all, or one JOB)"),
        ("history", "recent occurrences of JOB"),
        ("trigger", "run JOB now"),
        ("pause", "stop scheduling JOB until resumed"),
        ("resume", "schedule JOB again"),
    ):
        ctl = sub.add_parser(name, help=text)
        _common(ctl)
        ctl.add_argument("job", nargs="?" if name == "status" else None, help="job name")
        ctl.add_argument("--json", action="store_true", default=None, help="print JSON")
        ctl.add_argument("--socket", help="control socket (default: as the daemon)")
        ctl.add_argument("--url", help="control API over TCP, e.g. http://127.0.0.1:9464")
        if name == "history":
            ctl.add_argument("--limit", type=int, default=20)
        ctl.set_defaults(handler=cmd_ctl, ctl_command=name)

    nxt = sub.add_parser("next", help="show a job's next fire times, as the daemon computes them")
    _common(nxt)
    nxt.add_argument("job", help="job name (in the jobs folder) or a job file")
    nxt.add_argument("-n", type=int, default=5, help="how many (default 5)")
    nxt.add_argument("--after", help="ISO 8601 instant to start from (default now)")
    nxt.add_argument("--json", action="store_true", help="print a JSON array of ISO 8601 times")
    nxt.set_defaults(handler=cmd_next)
    return parser


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    paths = args.paths or [settings.jobs_dir]
    missing = [p for p in paths if not p.exists()]
    problems = [Problem(str(p), 0, 0, "", "no such file or folder") for p in missing]
    limits = Limits(max_file_bytes=settings.max_file_bytes)
    defaults = Defaults(product=settings.product, env=settings.env)
    result = load_folder([p for p in paths if p.exists()], limits, defaults)
    problems += result.all_problems()
    jobs = sum(len(f.jobs) for f in result.files if f.ok)
    _print_problems(problems, args.format)
    if args.format == "text":
        print(f"{len(result.files)} files, {jobs} valid jobs, {len(problems)} problems",
              file=sys.stderr)  # fmt: skip
    return 1 if problems else 0


def _print_problems(problems: list[Problem], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([p.as_dict() for p in problems], indent=2))
        return
    for p in problems:
        if fmt == "github":
            text = f"{p.field}: {p.message}" if p.field else p.message
            print(f"::error file={p.path},line={p.line},col={p.column}::{_gh_escape(text)}")
        else:
            print(p)


def _gh_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from runner.jobs.schema import render

    sys.stdout.write(render())
    return 0


def _emulator_args(parser: argparse.ArgumentParser) -> None:
    from runner.ductape import emulator as emu

    parser.add_argument("--host", default=emu.DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=emu.DEFAULT_PORT)
    parser.add_argument("--workspace-id", default=emu.DEMO_WORKSPACE_ID)
    parser.add_argument("--user-id", default=emu.DEMO_USER_ID)
    parser.add_argument("--public-key", default=emu.DEMO_PUBLIC_KEY)
    parser.add_argument("--access-token", default=emu.DEMO_ACCESS_TOKEN)


def cmd_emulator(args: argparse.Namespace, settings: Settings) -> int:
    from runner.ductape import emulator as emu

    emu.run_emulator(
        args.host, args.port, args.workspace_id, args.user_id, args.public_key, args.access_token
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

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
        reset_state=getattr(args, "reset_state", False),
    )
    return asyncio.run(daemon.run())


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    args.emulator, args.dry_run = True, False
    if args.state is None and "DUCTAPE_RUNNER_STATE" not in os.environ:
        settings = settings.model_copy(update={"state": ".demo-state.sqlite3"})
    return cmd_run(args, settings)


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.planning import print_plan

    return print_plan(settings)


def cmd_ctl(args: argparse.Namespace, settings: Settings) -> int:
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


def cmd_next(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.nextcmd import NextError, upcoming

    try:
        lines = upcoming(args.job, settings, n=args.n, after=args.after, as_json=args.json)
    except NextError as exc:
        print(f"ductape-runner next: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        environ=dict(os.environ),
        jobs_dir=getattr(args, "jobs_dir", None),
        state=getattr(args, "state", None),
        base_url=getattr(args, "base_url", None),
        credentials_directory=os.environ.get("CREDENTIALS_DIRECTORY"),
    )


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
