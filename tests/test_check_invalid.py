"""Every invalid job file gives exit 1 and its own path:line:col: field: message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.jobs.loader import Limits, load_file, load_folder

CORPUS = Path(__file__).parent / "corpus" / "invalid"
FILES = sorted(CORPUS.iterdir())


def expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    return first.removeprefix("# expect: ")


def test_the_corpus_has_at_least_forty_faults() -> None:
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_invalid_file_names_its_line_and_field(path: Path) -> None:
    result = load_file(path)
    assert result.problems, f"{path.name} loaded without a problem"
    assert str(result.problems[0]).startswith(f"{path}:{expectation(path)}")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_every_file_and_exits_one() -> None:
    proc = run_check(str(CORPUS))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    for path in FILES:
        assert f"{path}:{expectation(path)}" in proc.stdout


def test_check_json_lists_path_line_column_field_message() -> None:
    proc = run_check("--format", "json", str(CORPUS / "cron-bad-minute.yaml"))
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == [
        {
            "path": str(CORPUS / "cron-bad-minute.yaml"),
            "line": 8,
            "column": 9,
            "field": "schedule.cron",
            "message": "bad minute field '61' (allowed 0-59)",
        }
    ]


def test_check_github_format_prints_annotations() -> None:
    proc = run_check("--format", "github", str(CORPUS / "unknown-tz.yaml"))
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"::error file={CORPUS / 'unknown-tz.yaml'},line=9,col=7::")
    assert "schedule.tz: unknown time zone 'Mars/Olympus'" in proc.stdout


def test_check_on_a_missing_path_says_so() -> None:
    proc = run_check("/nonexistent/jobs")
    assert proc.returncode == 1
    assert "/nonexistent/jobs:0:0: no such file or folder" in proc.stdout


# Files that cannot live in the corpus as text: made here, one fault each.
def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BILLION_LAUGHS = b"a: &a ['x','x','x','x','x','x','x','x','x']\n" + b"".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n".encode()
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

HOSTILE = [
    ("alias-bomb.yaml", BILLION_LAUGHS, "6:", "more than 100000 nodes"),
    ("oversized.yaml", b"kind: action\n" + b"# padding\n" * 110_000, "1:1:", "1048576 byte limit"),
    ("binary.yaml", b"kind: action\n\x00\x01\x02", "2:1:", "binary file (NUL byte)"),
    ("latin1.yaml", b"kind: action\napp: caf\xe9\n", "2:9:", "not valid UTF-8 (byte 0xe9)"),
    ("empty.yaml", b"", "1:1:", "empty file: no job defined"),
    ("blank.toml", b"\n\n  \n", "1:1:", "empty file: no job defined"),
    (
        "deep-flow.yaml",
        b"input: " + b"[" * 100_000 + b"]" * 100_000,
        "1:",
        "nesting deeper than 32",
    ),
    # Below libyaml's own limit (1,000 in PyYAML >= 6.0.4): our builder's limit answers.
    ("shallow-flow.yaml", b"input: " + b"[" * 40 + b"]" * 40, "1:", "nesting deeper than 32"),
    ("deep-block.yaml", b"".join(b"  " * i + b"k:\n" for i in range(40)), "33:", "nesting deeper"),
    ("deep.toml", b"a = " + b"[" * 5_000 + b"]" * 5_000, "1:1:", "nesting deeper than 32"),
]


@pytest.mark.parametrize(("name", "data", "where", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_get_a_located_error(
    tmp_path: Path, name: str, data: bytes, where: str, message: str
) -> None:
    path = write(tmp_path / name, data)
    problems = load_file(path).problems
    assert len(problems) == 1
    text = str(problems[0])
    assert text.startswith(f"{path}:{where}"), text
    assert message in text


def test_a_fifo_is_skipped_with_an_error_not_a_hang(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    problems = load_file(fifo).problems
    assert "not a regular file" in str(problems[0])


def test_duplicate_names_across_files_name_both_files(tmp_path: Path) -> None:
    job = b"kind: quota\nproduct: p\nenv: dev\ntag: t\nname: nightly\n"
    first = write(tmp_path / "a.yaml", job)
    second = write(tmp_path / "b.yaml", b"# second\n" + job)
    result = load_folder([tmp_path])
    problems = result.all_problems()
    assert [str(p) for p in problems] == [
        f"{second}:2:1: name: duplicate job name 'nightly': also defined at {first}:1"
    ]
    assert list(result.jobs) == ["nightly"]
    assert result.jobs["nightly"].path == str(first)


def test_file_size_limit_is_a_setting(tmp_path: Path) -> None:
    path = write(tmp_path / "small.yaml", b"kind: quota\ntag: t\n# " + b"x" * 2000 + b"\n")
    assert "1024 byte limit" in str(load_file(path, Limits(max_file_bytes=1024)).problems[0])


def test_a_file_may_hold_thousands_of_jobs_but_not_more_than_the_limit(tmp_path: Path) -> None:
    jobs = "".join(f"  - {{name: j{i}, kind: quota, tag: t}}\n" for i in range(2_000))
    path = write(tmp_path / "many.yaml", ("jobs:\n" + jobs).encode())
    assert len(load_file(path).jobs) == 2_000
    [problem] = load_file(path, Limits(max_jobs_per_file=1_000)).problems
    assert str(problem) == f"{path}:1:1: jobs: more than 1000 jobs in one file"
