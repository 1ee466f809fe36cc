"""Discover, read and validate job files; every problem is located as path:line:col: field."""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from runner.errors import Problem
from runner.jobs.model import (
    DISCRIMINATOR_TAGS,
    JOB_ADAPTER,
    SUPPORTED_KINDS_TEXT,
    Job,
    find_secret_refs,
)
from runner.jobs.secrets import SecretPolicy
from runner.jobs.sharing import compact, known_schedule, shared_int
from runner.jobs.spelling import normalise
from runner.jobs.tomlsrc import load_toml
from runner.jobs.yamlsrc import Document, SourceError, load_yaml
from runner.jobs.yamlsrc import Path as DataPath

JOB_SUFFIXES = (".yaml", ".yml", ".toml")
_EDITOR_LITTER = ("4913",)


@dataclass(frozen=True)
class Limits:
    """Bounds that keep hostile files from hurting the daemon."""

    max_file_bytes: int = 1024 * 1024
    max_depth: int = 32
    max_nodes: int = 100_000
    max_jobs_per_file: int = 10_000  # the 1 MiB size limit binds first for small jobs


@dataclass(frozen=True)
class Defaults:
    """Values applied to jobs that omit them (from settings)."""

    product: str | None = None
    env: str | None = None
    # `check` passes the settings' policy, so refused ${env:}/${file:} references are
    # located; the daemon does not (a refusal fails the occurrence, issue 13 item 11).
    secrets: SecretPolicy | None = None


@dataclass(frozen=True, slots=True)
class LoadedJob:
    """A validated job and where it was defined."""

    job: Job
    path: str
    line: int
    digest: str  # hash of the canonical definition: changes iff the job changes


@dataclass
class FileResult:
    """Everything one file yields: jobs, problems, and the content hash it was read at."""

    path: str
    content_hash: str = ""
    jobs: list[LoadedJob] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class FolderResult:
    """A whole folder: its files in path order (duplicate names are the later file's problem)."""

    files: list[FileResult] = field(default_factory=list)

    @property
    def jobs(self) -> dict[str, LoadedJob]:
        return {j.job.name: j for f in self.files if f.ok for j in f.jobs}

    def all_problems(self) -> list[Problem]:
        return [p for f in self.files for p in f.problems]


def is_job_file_name(name: str) -> bool:
    """True for *.yaml/*.yml/*.toml that are not dot-files or editor litter."""
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".tmp")):
        return False
    return name not in _EDITOR_LITTER and name.endswith(JOB_SUFFIXES)


def discover(folder: Path) -> list[Path]:
    """Job files below `folder`, sorted; dot-dirs skipped, symlink loops broken."""
    return [Path(p) for p in discover_names(str(folder))]


def discover_names(folder: str) -> list[str]:
    """discover() on strings, for rescans: building Path objects for 10,000 files costs
    ~0.2 s a scan, three times this walk (bench/reload.py)."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            info = os.stat(current)  # noqa: PTH116 (strings on purpose)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                pending.append(entry.path)
            elif is_job_file_name(entry.name):
                found.append(entry.path)
    return sorted(found, key=lambda p: p.split(os.sep))  # noqa: PTH206 (Path order, no Paths)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def read_bounded(path: Path, limits: Limits) -> bytes:
    """Read a regular file of at most max_file_bytes; raise SourceError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(f"cannot open file: {exc.strerror}", 1, 1) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SourceError("not a regular file (FIFO, socket or device): skipped", 1, 1)
        data = handle.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise SourceError(f"file is larger than the {limits.max_file_bytes} byte limit", 1, 1)
    return data


def decode(data: bytes) -> str:
    """UTF-8 text of a job file, with a located error for binary or other encodings."""
    if b"\x00" in data:
        line, col = _line_col(data, data.index(b"\x00"))
        raise SourceError("binary file (NUL byte): job files are UTF-8 text", line, col)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise SourceError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x})", line, col) from None
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise SourceError("empty file: no job defined", 1, 1)
    return text.removeprefix("\ufeff")


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def parse_documents(
    path: Path, text: str, limits: Limits, *, positions: bool = True
) -> list[Document]:
    if path.suffix == ".toml":
        return [load_toml(text, max_depth=limits.max_depth)]
    docs = load_yaml(
        text, max_depth=limits.max_depth, max_nodes=limits.max_nodes, positions=positions
    )
    return [d for d in docs if d.data is not None]


def load_file(
    path: Path,
    limits: Limits = Limits(),
    defaults: Defaults = Defaults(),
    data: bytes | None = None,
) -> FileResult:
    """Read, parse and validate one job file; never raises for bad content."""
    shown = str(path)
    content_hash = ""
    try:
        raw = read_bounded(path, limits) if data is None else data
        content_hash = hashlib.sha256(raw).hexdigest()
        text = decode(raw)
    except SourceError as exc:
        result = FileResult(shown, content_hash=content_hash)
        result.problems.append(Problem(shown, exc.line, exc.column, _dotted(exc.path), exc.message))
        return result
    # Parsed without the place of every key and value first: a valid file (most are)
    # needs only where each job starts (issue 12: a 100,000-job first start). A file with
    # any problem is parsed and validated again with them, to place its problems.
    result = _load(path, shown, text, content_hash, limits, defaults, positions=False)
    if result.problems:
        result = _load(path, shown, text, content_hash, limits, defaults, positions=True)
    return result


def _load(
    path: Path,
    shown: str,
    text: str,
    content_hash: str,
    limits: Limits,
    defaults: Defaults,
    *,
    positions: bool,
) -> FileResult:
    result = FileResult(shown)
    result.content_hash = content_hash
    try:
        docs = parse_documents(path, text, limits, positions=positions)
    except SourceError as exc:
        result.problems.append(Problem(shown, exc.line, exc.column, _dotted(exc.path), exc.message))
        return result
    if not docs:
        result.problems.append(Problem(shown, 1, 1, "", "empty file: no job defined"))
    entries = list(_job_entries(docs, shown, result))
    # The file stem names the job only when the file holds exactly one, unlisted job.
    stem = path.stem if len(entries) == 1 and not entries[0][1] else None
    has_refs = "${" in text  # once per file: per entry it scanned the file 1,000 times
    for doc, base, job_data in entries:
        _validate_entry(result, doc, base, job_data, stem, defaults, has_refs)
    if len(result.jobs) > limits.max_jobs_per_file:
        result.problems.append(
            Problem(shown, 1, 1, "jobs", f"more than {limits.max_jobs_per_file} jobs in one file")
        )
    return result


def _job_entries(
    docs: list[Document], shown: str, result: FileResult
) -> Iterator[tuple[Document, DataPath, Any]]:
    """Yield (document, path prefix, mapping) for each job the documents define."""
    for doc in docs:
        data = doc.data
        if isinstance(data, dict) and set(data) == {"jobs"}:
            jobs = data["jobs"]
            if not isinstance(jobs, list) or not jobs:
                line, col = doc.position(("jobs",))
                result.problems.append(
                    Problem(shown, line, col, "jobs", "must be a non-empty list of jobs")
                )
                continue
            for index, item in enumerate(jobs):
                yield doc, ("jobs", index), item
        else:
            yield doc, (), data


def _validate_entry(
    result: FileResult,
    doc: Document,
    base: DataPath,
    data: Any,
    stem: str | None,
    defaults: Defaults,
    has_refs: bool,
) -> None:
    if not isinstance(data, dict):
        line, col = doc.position(base)
        kind = type(data).__name__
        result.problems.append(
            Problem(result.path, line, col, _dotted(base), f"a job must be a mapping, got {kind}")
        )
        return
    norm = normalise(data)
    if stem is not None and "name" not in norm.data:
        norm.data["name"] = stem
    for key in ("product", "env"):
        value = getattr(defaults, key)
        if value is not None and key not in norm.data:
            norm.data[key] = value
    found = list(norm.problems)
    if has_refs:
        found.extend(_secret_ref_problems(norm.data, (), defaults.secrets))
    problems = [_problem(result.path, doc, base, norm.source_path(p), m, False) for p, m in found]
    if norm.problems:
        result.problems.extend(problems)
        return
    known_schedule(norm.data)
    try:
        job = JOB_ADAPTER.validate_python(norm.data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, result.path, doc, base, norm))
    if problems:
        result.problems.extend(_unique(problems))
        return
    line = shared_int(doc.position(base)[0])
    digest = hashlib.sha256(job.model_dump_json(by_alias=True).encode()).hexdigest()
    result.jobs.append(LoadedJob(compact(job), result.path, line, digest))


def _secret_ref_problems(
    value: Any, path: DataPath, policy: SecretPolicy | None
) -> Iterator[tuple[DataPath, str]]:
    """Locate every malformed ${...} secret reference anywhere in a job, and those
    `policy` refuses."""
    if isinstance(value, str):
        try:
            refs = find_secret_refs(value)
        except PydanticCustomError as exc:
            yield path, str(exc)
            return
        for scheme, arg in refs:
            refused = policy.refusal(scheme, arg) if policy is not None else None
            if refused is not None:
                yield path, f"secret reference ${{{scheme}:{arg}}} refused: {refused}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_ref_problems(item, (*path, key), policy)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_ref_problems(item, (*path, index), policy)


def _unique(problems: list[Problem]) -> list[Problem]:
    # The same place can fail both the early reference scan and the model.
    seen: set[tuple[int, int, str]] = set()
    out = []
    for p in problems:
        if (p.line, p.column, p.field) not in seen:
            seen.add((p.line, p.column, p.field))
            out.append(p)
    return out


def _pydantic_problems(
    exc: ValidationError, shown: str, doc: Document, base: DataPath, norm: Any
) -> Iterable[Problem]:
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"], error["type"])
        message, on_key = _message(error, loc)
        on_key = on_key or "[key]" in error["loc"]
        yield _problem(shown, doc, base, norm.source_path(loc), message, on_key)


def _clean_loc(loc: tuple[int | str, ...], kind: str) -> DataPath:
    parts = [p for p in loc if p != "[key]"]
    if parts and parts[0] in DISCRIMINATOR_TAGS:
        parts = parts[1:]
    if kind.startswith("union_tag"):
        return ("kind",)
    # Pydantic names the validator in the location of some union branches; drop it.
    return tuple(p for p in parts if not (isinstance(p, str) and p.startswith("function-")))


def _message(error: Any, loc: DataPath) -> tuple[str, bool]:
    kind = error["type"]
    name = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        return f"unknown field '{name}'{_suggest(error, name)}", True
    if kind == "missing":
        return f"required field '{name}' is missing", False
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", error.get("input"))
        return f"unsupported kind '{tag}': supported kinds are {SUPPORTED_KINDS_TEXT}", False
    if kind == "union_tag_not_found":
        return f"required field 'kind' is missing (one of {SUPPORTED_KINDS_TEXT})", False
    message = str(error["msg"]).removeprefix("Value error, ")
    return message[:1].lower() + message[1:], False


# Fields that are right one level down: named where they belong, not "did you mean" the
# same name (`kind:` with a top-level `start_at` once said "did you mean 'start_at'?").
_BELONGS = {
    **dict.fromkeys(
        ("start_at", "cron", "every", "limit", "endDate", "tz"),
        "'schedule'; in the 'type:' spelling 'start_at' is at the top level and the rest in"
        " 'repeat'",
    ),
    **dict.fromkeys(("initial", "max", "multiplier"), "'retry'"),
    **dict.fromkeys(("policy", "window"), "'catchup'"),
    **dict.fromkeys(("skipped", "repeated"), "'dst'"),
    "token": "'session'",
}


def _suggest(error: Any, name: str | int) -> str:
    known = [
        "name", "description", "kind", "env", "product", "input", "retries", "session",
        "cache", "schedule", "suspend", "timeout", "retry", "concurrency", "catchup", "dst",
        "jitter", "labels", "app", "event", "workflow", "notification", "storage", "operation",
        "broker", "database", "graph", "tag", "start_at", "cron", "every", "limit", "endDate",
        "tz", "initial", "max", "multiplier", "policy", "window", "skipped", "repeated", "token",
    ]  # fmt: skip
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.75)
    if not close:
        return ""
    if close[0] == name:  # a field, but not of this mapping or this kind
        where = _BELONGS.get(str(name))
        return f" (a field of {where})" if where else " (not a field of this job's kind)"
    return f" (did you mean '{close[0]}'?)"


def _problem(
    shown: str, doc: Document, base: DataPath, loc: DataPath, message: str, on_key: bool
) -> Problem:
    full = (*base, *loc)
    line, col = doc.position(full, prefer_key=on_key)
    return Problem(shown, line, col, _dotted(full), message)


def _dotted(path: DataPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_folder(
    paths: Iterable[Path], limits: Limits = Limits(), defaults: Defaults = Defaults()
) -> FolderResult:
    """Load files (or folders) and check that job names are unique across them."""
    result = FolderResult()
    for path in paths:
        files = discover(path) if path.is_dir() else [path]
        result.files.extend(load_file(f, limits, defaults) for f in files)
    mark_duplicate_names(result.files)
    return result


def mark_duplicate_names(files: list[FileResult]) -> None:
    """Add a problem to each file defining a job name that an earlier file already took.

    The earlier definition (in path order) wins; the later file is invalid as a whole,
    so the daemon keeps running whatever it last accepted from it.
    """
    first: dict[str, LoadedJob] = {}
    for file in files:
        for loaded in file.jobs:
            other = first.setdefault(loaded.job.name, loaded)
            if other is loaded:
                continue
            file.problems.append(
                Problem(
                    loaded.path, loaded.line, 1, "name",
                    f"duplicate job name '{loaded.job.name}': also defined at "
                    f"{other.path}:{other.line}",
                )
            )  # fmt: skip
