"""The pictures, drawn on the server as inline SVG (no script, no library): runs per job
over the last 24 h as hourly cells coloured by outcome, and lateness and duration
distributions as bar charts on log-spaced buckets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runner.daemon.ui.html import esc, job_url

HOURS = 24
CELL = 18
OUTCOMES = ("succeeded", "failed", "skipped", "cancelled", "dry_run")
# Bucket upper bounds in milliseconds; the last bucket takes everything above.
BOUNDS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)


def outcome_of(counts: Mapping[str, int]) -> str:
    """One colour per cell: any failure shows, then success, then the rest."""
    for state in ("failed", "succeeded", "dry_run", "skipped", "cancelled"):
        if counts.get(state):
            return state
    return "open" if counts else "none"


def timeline(name: str, hours: Mapping[int, Mapping[str, int]]) -> str:
    """One job's row: 24 cells, oldest first, each titled with its counts."""
    cells = []
    for hour in range(HOURS):
        counts = hours.get(hour, {})
        title = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no runs"
        label = f"{HOURS - hour} h ago: {title}"
        cells.append(
            f'<rect x="{hour * CELL}" y="0" width="{CELL - 2}" height="{CELL - 2}"'
            f' class="cell {outcome_of(counts)}"><title>{esc(label)}</title></rect>'
        )
    width = HOURS * CELL
    svg = (
        f'<svg role=img aria-label="runs of {esc(name)} over 24 h" width="{width}"'
        f' height="{CELL}" viewBox="0 0 {width} {CELL}">{"".join(cells)}</svg>'
    )
    return f'<tr><td><a href="{esc(job_url(name))}">{esc(name)}</a></td><td>{svg}</td></tr>'


def legend() -> str:
    states = (*OUTCOMES, "open", "none")
    items = "".join(
        f'<span><svg width="12" height="12"><rect width="12" height="12" class="cell {s}"/>'
        f"</svg> {esc(s.replace('_', ' '))}</span>"
        for s in states
    )
    return f"<p class=legend>{items}</p>"


def buckets(values: Sequence[int]) -> list[int]:
    counts = [0] * (len(BOUNDS) + 1)
    for value in values:
        counts[next((i for i, b in enumerate(BOUNDS) if value <= b), len(BOUNDS))] += 1
    return counts


def histogram(title: str, values: Sequence[int]) -> str:
    """Bars per bucket, labelled '≤10 ms' ... '>60 s', with the count above each bar."""
    counts = buckets(values)
    top = max(counts) or 1
    width, height, bar = 60, 120, 52
    parts = []
    labels = [f"≤{_short(b)}" for b in BOUNDS] + [f">{_short(BOUNDS[-1])}"]
    for i, (count, label) in enumerate(zip(counts, labels, strict=True)):
        h = round(count / top * height)
        x = i * width
        parts.append(
            f'<rect x="{x}" y="{20 + height - h}" width="{bar}" height="{h}" class=bar>'
            f"<title>{esc(label)}: {count}</title></rect>"
            f'<text x="{x + bar / 2}" y="{14 + height - h}" class=count>{count}</text>'
            f'<text x="{x + bar / 2}" y="{height + 36}" class=label>{esc(label)}</text>'
        )
    total_w = width * len(counts)
    return (
        f"<figure><figcaption>{esc(title)} ({len(values)} runs)</figcaption>"
        f'<svg role=img aria-label="{esc(title)}" width="{total_w}" height="{height + 44}"'
        f' viewBox="0 0 {total_w} {height + 44}">{"".join(parts)}</svg></figure>'
    )


def _short(ms: int) -> str:
    return f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"
