"""Read one side of a `diff`: a folder on disk, or a folder at a Git revision (`main:jobs.d`).

A revision is read with `git` itself (ls-tree, then cat-file --batch): nothing is checked
out. Files are chosen and ordered as the daemon's folder scan chooses them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from runner.errors import Problem, RunnerError
from runner.jobs.loader import Defaults, FileResult, Limits, discover, is_job_file_name, load_file

_SKIPPED_MODES = ("120000", "160000")  # symbolic links and submodules: not job files here


class SideError(RunnerError):
    """A side that cannot be read: not a folder, an unknown revision, git failing."""


@dataclass
class Side:
    """What one side holds: its files in path order, and a note when it is empty on purpose."""

    label: str
    root: str  # prefix of every path shown: the folder, as given or inside the revision
    files: list[FileResult]
    note: str | None = None

    def rebased(self, root: str) -> Side:
        """This side with its paths under `root`, so the same file on both sides matches."""
        if root == self.root:
            return self
        files = [_rebase(f, self.root, root) for f in self.files]
        return Side(self.label, root, files, self.note)


def read_side(spec: str, repo: Path, limits: Limits, defaults: Defaults) -> Side:
    """A folder when `spec` names one, else `REV:PATH` read from the Git repository `repo`."""
    if Path(spec).is_dir():
        root = "" if str(Path(spec)) == "." else f"{Path(spec)}/"
        return Side(spec, root, [load_file(p, limits, defaults) for p in discover(Path(spec))])
    rev, sep, folder = spec.partition(":")
    if not sep or not rev:
        raise SideError(f"{spec}: neither a folder nor a Git revision and folder (REV:PATH)")
    return _git_side(spec, rev, folder.strip("/"), repo, limits, defaults)


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], input=stdin, capture_output=True, timeout=120
        )
    except FileNotFoundError:
        raise SideError("git is not installed (needed to read a revision)") from None


def _git_side(
    spec: str, rev: str, folder: str, repo: Path, limits: Limits, defaults: Defaults
) -> Side:
    if _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise SideError(f"{spec}: unknown revision '{rev}' in {repo}")
    kind = _git(repo, "cat-file", "-t", f"{rev}:{folder}")
    if kind.returncode != 0:
        return Side(
            spec,
            f"{folder}/" if folder else "",
            [],
            note=f"{spec}: no such folder at that revision: compared as empty",
        )
    if kind.stdout.strip() != b"tree":
        raise SideError(f"{spec}: not a folder at that revision")
    listing = _git(repo, "ls-tree", "-r", "-z", f"{rev}:{folder}")
    if listing.returncode != 0:
        raise SideError(f"{spec}: git ls-tree failed: {listing.stderr.decode(errors='replace')}")
    entries = _job_entries(listing.stdout)
    blobs = _read_blobs(repo, [oid for oid, _ in entries])
    prefix = f"{folder}/" if folder else ""
    files = [
        _load(f"{prefix}{name}", blob, limits, defaults)
        for (_, name), blob in zip(entries, blobs, strict=True)
    ]
    return Side(spec, prefix, files)


def _job_entries(listing: bytes) -> list[tuple[str, str]]:
    """(object id, path) of the job files in `git ls-tree -r -z` output, in scan order."""
    found = []
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw = record.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        name = raw.decode("utf-8", errors="surrogateescape")
        parts = name.split("/")
        if kind != "blob" or mode in _SKIPPED_MODES or any(p.startswith(".") for p in parts):
            continue
        if is_job_file_name(parts[-1]):
            found.append((oid, name))
    return sorted(found, key=lambda entry: entry[1].split("/"))


def _read_blobs(repo: Path, oids: list[str]) -> list[bytes]:
    if not oids:
        return []
    proc = _git(repo, "cat-file", "--batch", stdin="".join(f"{o}\n" for o in oids).encode())
    if proc.returncode != 0:
        raise SideError(f"git cat-file failed: {proc.stderr.decode(errors='replace')}")
    out, pos, blobs = proc.stdout, 0, []
    for _ in oids:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        blobs.append(out[end + 1 : end + 1 + size])
        pos = end + 1 + size + 1  # the content, then a newline
    return blobs


def _load(shown: str, blob: bytes, limits: Limits, defaults: Defaults) -> FileResult:
    if len(blob) > limits.max_file_bytes:  # load_file checks size only when it reads
        message = f"file is larger than the {limits.max_file_bytes} byte limit"
        return FileResult(shown, problems=[Problem(shown, 1, 1, "", message)])
    return load_file(Path(shown), limits, defaults, data=blob)


def _rebase(result: FileResult, old: str, new: str) -> FileResult:
    path = new + result.path.removeprefix(old)
    jobs = [replace(j, path=path) for j in result.jobs]
    problems = [replace(p, path=path) for p in result.problems]
    return FileResult(path, result.content_hash, jobs, problems)
