"""The report of a comparison run: a markdown file, a PNG chart, the raw JSON, a summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benches.compare.harness import Run

# (library, storage, settings, has batch enqueue) by peer key
Settings = dict[str, tuple[str, str, str, bool]]

# The hauler rows a peer is compared with, first measured one wins: the same kind of
# storage, with hauler's workers in a process of their own like the peer's where there is
# such a row; Redis peers are compared with hauler on PostgreSQL (both a server here).
REFERENCE = {
    "memory": ["hauler-memory"],
    "SQLite NORMAL": ["hauler-sqlite-normal-process", "hauler-sqlite-normal"],
    "SQLite FULL": ["hauler-sqlite-full"],
    "PostgreSQL": ["hauler-postgres-process", "hauler-postgres"],
    "Redis": ["hauler-postgres-process", "hauler-postgres"],
}
# Peers whose workers run in the harness process, like hauler's in-process rows.
IN_PROCESS = {"huey-memory": ["hauler-memory"]}


class Results:
    """Lookups into the runs of one comparison."""

    def __init__(self, settings: Settings, runs: Sequence[Run]) -> None:
        self.settings = settings
        self.keys = list(settings)
        self.by = {(r.peer, r.workload): r for r in runs}

    def run(self, key: str, workload: str) -> Run | None:
        return self.by.get((key, workload))

    def value(self, key: str, workload: str, name: str) -> float | None:
        run = self.run(key, workload)
        if run is None or run.status != "ok":
            return None
        v = run.values.get(name)
        return float(v) if v is not None else None

    def cell(self, key: str, workload: str, name: str, fmt: Callable[[float], str]) -> str:
        run = self.run(key, workload)
        if run is None:
            return "n/a"
        if run.status != "ok":
            return "**FAILED**"
        v = run.values.get(name)
        return "n/a" if v is None else fmt(float(v))

    def reference(self, key: str, workload: str, name: str) -> float | None:
        """The number of the hauler row ``key`` is compared with (see ``REFERENCE``)."""
        library, store, _, _ = self.settings[key]
        if library == "hauler":
            return self.value(key, workload, name)
        candidates = IN_PROCESS.get(key) or REFERENCE.get(store, ["hauler-postgres"])
        for ref in candidates:
            v = self.value(ref, workload, name)
            if v is not None:
                return v
        return None

    def ratio(self, key: str, workload: str, name: str) -> str:
        """This peer's number divided by its hauler reference's, measured in this run."""
        mine = self.value(key, workload, name)
        theirs = self.reference(key, workload, name)
        if mine is None or theirs is None or theirs == 0:
            return "-"
        return f"{mine / theirs:.2f}x"

    def label(self, key: str) -> tuple[str, str]:
        library, store, _, _ = self.settings[key]
        return (f"**{library}**" if library == "hauler" else library), store


def rate(v: float) -> str:
    return f"{v:,.0f}"


def ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:,.0f}"


def mb(v: float) -> str:
    return f"{v:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i < 2 else "--:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def failures(res: Results, workloads: Sequence[str]) -> list[str]:
    out = []
    for key in res.keys:
        for w in workloads:
            run = res.run(key, w)
            if run is not None and run.status != "ok":
                library, store = res.label(key)
                out.append(f"- FAILED: {library} ({store}), {w}: {run.reason}")
    return ["", *out] if out else []


def targets(res: Results) -> list[str]:
    """The issue's targets, checked against this run."""

    def v(key: str, workload: str, name: str) -> float | None:
        return res.value(key, workload, name)

    def ge(a: float | None, b: float | None, k: float = 1.0) -> str:
        if a is None or b is None:
            return "not measured"
        return ("met" if a >= k * b else "not met") + f" ({a:,.0f} vs {k * b:,.0f})"

    def times(a: float | None, b: float | None, k: float) -> str:
        if a is None or b is None or b == 0:
            return "not measured"
        return ("met" if a >= k * b else "not met") + f" ({a / b:.1f}x)"

    def le(a: float | None, limit: float, unit: str) -> str:
        if a is None:
            return "not measured"
        return ("met" if a <= limit else "not met") + f" ({a:.2f} {unit})"

    d = "drain-batch"
    rows = [
        [
            "memory: ≥ 100,000 jobs/s end to end (queued in batches from Python, then run)",
            ge(v("hauler-memory", d, "e2e_per_s"), 100_000),
        ],
        ["SQLite NORMAL: ≥ 40,000 jobs/s", ge(v("hauler-sqlite-normal", d, "drain_per_s"), 40_000)],
        ["SQLite FULL: ≥ 20,000 jobs/s", ge(v("hauler-sqlite-full", d, "drain_per_s"), 20_000)],
        [
            "SQLite NORMAL: ≥ 10x SqliteHuey (single enqueue, huey has no batch)",
            times(
                v("hauler-sqlite-normal", "drain-single", "drain_per_s"),
                v("huey-sqlite", "drain-single", "drain_per_s"),
                10,
            ),
        ],
        ["PostgreSQL: ≥ 15,000 jobs/s drained", ge(v("hauler-postgres", d, "drain_per_s"), 15_000)],
        [
            "PostgreSQL: batch enqueue ≥ 100,000 jobs/s",
            ge(v("hauler-postgres", d, "enqueue_per_s"), 100_000),
        ],
        [
            "PostgreSQL: ≥ 20x procrastinate",
            times(
                v("hauler-postgres", d, "drain_per_s"),
                v("procrastinate-postgres", d, "drain_per_s"),
                20,
            ),
        ],
        [
            "PostgreSQL: ahead of Celery+Redis",
            times(v("hauler-postgres", d, "drain_per_s"), v("celery-redis", d, "drain_per_s"), 1),
        ],
        [
            "PostgreSQL: ahead of Dramatiq+Redis (single enqueue)",
            times(
                v("hauler-postgres", "drain-single", "drain_per_s"),
                v("dramatiq-redis", "drain-single", "drain_per_s"),
                1,
            ),
        ],
    ]
    for key, limit in [
        ("hauler-memory", 1.0),
        ("hauler-sqlite-normal", 1.0),
        ("hauler-postgres", 2.0),
    ]:
        rows.append([f"{key}: p50 ≤ {limit:g} ms", le(v(key, "latency", "p50_ms"), limit, "ms")])
        rows.append(
            [f"{key}: p99 ≤ 10 ms (idle machine)", le(v(key, "latency", "p99_ms"), 10, "ms")]
        )
    rows.append(
        [
            "memory: 100,000 queued jobs < 100 MB RSS",
            le(v("hauler-memory", "rss", "peak_rss_mb"), 100, "MB"),
        ]
    )
    return table(["target (issue 4)", "this run"], rows)


def markdown(meta: dict[str, Any], settings: Settings, runs: Sequence[Run]) -> str:
    res = Results(settings, runs)
    sizes = meta["sizes"]
    c, io_c = meta["concurrency"], meta["io_concurrency"]
    out = [f"# hauler vs the Python job libraries ({meta['mode']} run, {meta['started']})", ""]
    if meta["note"]:
        out += [f"> **{meta['note']}**", ""]
    out += [
        "Produced by `python -m benches.compare"
        + (" --quick" if meta["mode"] == "quick" else "")
        + (f" --repeat {meta['repeat']}" if meta["repeat"] > 1 else "")
        + f"` in {meta['minutes']} minutes"
        + (f" (medians of {meta['repeat']} rounds)" if meta["repeat"] > 1 else "")
        + ". All numbers come from this one run; the ratios "
        "(x hauler: the peer's number divided by hauler's on the same kind of storage, with "
        "hauler's workers in a separate process where the peer's are; Redis peers are compared "
        "with hauler on PostgreSQL) are what to read, absolute numbers are context.",
        "",
        f"- Machine: {meta['machine']}; load: {meta['load']}",
        f"- Python {meta['python']}; hauler at {meta['hauler_commit']} (release build)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Servers on this machine, loopback: Redis {meta['redis']} (no persistence), "
        f"PostgreSQL {meta['postgres']} (`.ci/postgres.sh`: fsync, synchronous_commit and "
        "full_page_writes off, the same for every PostgreSQL peer)",
        f"- Concurrency: {c} for no-op jobs, {io_c} for I/O jobs, the same total for every "
        "library; worker processes are started and stopped by the harness, where that is "
        "how the library runs",
        "- Every job appends (its number, its start time on CLOCK_MONOTONIC) to a per-process "
        "file: the drains check that every job ran exactly once, and the rates run from the "
        "first job's start to the last's (worker start-up is not counted)",
        "",
        "| library | storage | how it was run |",
        "|---|---|---|",
    ]
    for key in res.keys:
        library, store, how, _ = settings[key]
        out.append(f"| {library} | {store} | {how} |")

    drains = ["drain-batch", "drain-single"]
    out += ["", f"## 1. Drain: {sizes['drain']:,} no-op jobs queued, then the workers start", ""]
    rows = []
    for key in res.keys:
        best = "drain-batch" if settings[key][3] else "drain-single"
        rows.append(
            [
                *res.label(key),
                res.cell(key, "drain-batch", "drain_per_s", rate),
                res.ratio(key, "drain-batch", "drain_per_s"),
                res.cell(key, "drain-single", "drain_per_s", rate),
                res.ratio(key, "drain-single", "drain_per_s"),
                res.cell(key, best, "wall_per_s", rate),
                res.cell(key, best, "e2e_per_s", rate),
            ]
        )
    out += table(
        [
            "library",
            "storage",
            "jobs/s (queued in batches)",
            "x hauler",
            "jobs/s (queued one by one)",
            "x hauler",
            "jobs/s from the worker start",
            "jobs/s queue + run",
        ],
        rows,
    )
    out += failures(res, drains)
    out += [
        "",
        "n/a: the library has no batch enqueue (its drain of singly queued jobs is in the "
        "next column). The last column divides by the time from the command that starts the "
        "workers (process start-up included) to the last job's start, for the batch-queued "
        "drain where there is one; the next one by the whole time from the first job queued "
        "to the last one's start (queueing, then the worker start and the drain).",
    ]

    out += ["", f"## 2. Enqueue rate ({sizes['drain']:,} jobs, from the harness process)", ""]
    rows = []
    for key in res.keys:
        rows.append(
            [
                *res.label(key),
                res.cell(key, "drain-single", "enqueue_per_s", rate),
                res.ratio(key, "drain-single", "enqueue_per_s"),
                res.cell(key, "drain-batch", "enqueue_per_s", rate),
                res.ratio(key, "drain-batch", "enqueue_per_s"),
            ]
        )
    out += table(
        ["library", "storage", "single (jobs/s)", "x hauler", "batch (jobs/s)", "x hauler"], rows
    )

    out += [
        "",
        f"## 3. Latency: {meta['rate']:.0f} jobs/s for {sizes['latency']:,} jobs, "
        "schedule-to-start",
        "",
        "From just before the enqueue call to the job's first line, idle workers waiting.",
        "",
    ]
    rows = []
    for key in res.keys:
        rows.append(
            [
                *res.label(key),
                res.cell(key, "latency", "p50_ms", ms),
                res.cell(key, "latency", "p99_ms", ms),
                res.cell(key, "latency", "max_ms", ms),
                res.ratio(key, "latency", "p50_ms"),
            ]
        )
    out += table(["library", "storage", "p50 (ms)", "p99 (ms)", "max (ms)", "p50 x hauler"], rows)
    out += failures(res, ["latency"])

    ideal = io_c / 0.005
    out += [
        "",
        f"## 4. I/O: {sizes['io']:,} jobs of 5 ms sleep at concurrency {io_c}",
        "",
        f"`time.sleep` in sync jobs, `asyncio.sleep` in async ones (arq, taskiq, "
        f"procrastinate); the ideal is {ideal:,.0f} jobs/s.",
        "",
    ]
    rows = []
    for key in res.keys:
        rows.append(
            [
                *res.label(key),
                res.cell(key, "io", "drain_per_s", rate),
                res.ratio(key, "io", "drain_per_s"),
            ]
        )
    out += table(["library", "storage", "jobs/s", "x hauler"], rows)
    out += failures(res, ["io"])

    out += [
        "",
        f"## 5. Memory: peak RSS of the workers with {sizes['rss']:,} jobs queued",
        "",
        f"Sampled every 20 ms from the worker start until {sizes['rss_window']:g} s after the "
        "first job ran; all the worker's processes added up. hauler's pool (and MemoryHuey's "
        "consumer) runs in the process that queued the jobs, so its RSS includes the queued "
        "jobs for the memory storages; the other peers keep them in Redis or PostgreSQL.",
        "",
    ]
    rows = []
    for key in res.keys:
        rows.append(
            [
                *res.label(key),
                res.cell(key, "rss", "peak_rss_mb", mb),
                res.ratio(key, "rss", "peak_rss_mb"),
                res.cell(key, "rss", "ran", rate),
            ]
        )
    out += table(["library", "storage", "peak RSS (MB)", "x hauler", "jobs run meanwhile"], rows)
    out += failures(res, ["rss"])

    out += ["", "## The targets of issue 4", ""]
    out += targets(res)
    out += ["", f"Chart: `{meta['chart']}`; raw numbers: `{meta['raw']}`.", ""]
    return "\n".join(out)


def chart(path: Path, meta: dict[str, Any], settings: Settings, runs: Sequence[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(settings, runs)
    panels = [
        ("drain-best", "drain_per_s", "Drain (jobs/s; * = queued one by one: no batch)", True),
        ("drain-single", "drain_per_s", "Drain, singly queued (jobs/s)", True),
        ("drain-single", "enqueue_per_s", "Enqueue, single (jobs/s)", True),
        ("latency", "p50_ms", "Schedule-to-start p50 (ms, lower is better)", True),
        ("io", "drain_per_s", "5 ms I/O jobs at concurrency 50 (jobs/s)", True),
        ("rss", "peak_rss_mb", "Worker peak RSS (MB, lower is better)", False),
    ]
    labels = [f"{settings[k][0]} ({settings[k][1]})" for k in res.keys]
    fig, axes = plt.subplots(3, 2, figsize=(14, 15))
    for ax, (panel, name, title, log) in zip(axes.flat, panels, strict=True):
        values = []
        marks = []
        for k in res.keys:
            workload = panel
            if panel == "drain-best":
                workload = "drain-batch" if settings[k][3] else "drain-single"
            values.append(res.value(k, workload, name))
            marks.append("*" if panel == "drain-best" and not settings[k][3] else "")
        colors = ["#d95f02" if settings[k][0] == "hauler" else "#7570b3" for k in res.keys]
        y = list(range(len(res.keys)))
        ax.barh(y, [v or 0 for v in values], color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log and any(values):
            ax.set_xscale("log")
        for yi, (v, mark) in enumerate(zip(values, marks, strict=True)):
            if v is None:
                ax.text(
                    0.01, yi, "FAILED", va="center", fontsize=8, transform=ax.get_yaxis_transform()
                )
            else:
                text = f" {v:,.0f}" if v >= 10 else f" {v:.2f}"
                ax.text(v, yi, text + mark, va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    title = f"hauler vs peers, {meta['mode']} run {meta['started']}"
    if meta["note"]:
        title += f" ({meta['note']})"
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(
    out: Path, stem: str, meta: dict[str, Any], settings: Settings, runs: Sequence[Run]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, png, raw = out / f"{stem}.md", out / f"{stem}.png", out / f"{stem}.json"
    meta = dict(meta, chart=png.name, raw=raw.name)
    raw.write_text(
        json.dumps(
            {"meta": meta, "settings": settings, "runs": [r.__dict__ for r in runs]}, indent=1
        )
        + "\n"
    )
    chart(png, meta, settings, runs)
    md.write_text(markdown(meta, settings, runs))
    return [md, png, raw]


def summary(settings: Settings, runs: Sequence[Run]) -> str:
    res = Results(settings, runs)
    lines = [
        "",
        f"{'library (storage)':40} {'drain/s':>10} {'xh':>6} {'enq 1/s':>10} "
        f"{'enq N/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'io/s':>8} {'RSS MB':>7}",
    ]

    def f(key: str, w: str, name: str, fmt: str) -> str:
        run = res.run(key, w)
        if run is None:
            return "n/a"
        if run.status != "ok":
            return "FAILED"
        v = run.values.get(name)
        return "n/a" if v is None else format(v, fmt)

    for key in res.keys:
        library, store, _, batch = settings[key]
        w = "drain-batch" if batch else "drain-single"
        lines.append(
            f"{library + ' (' + store + ')':40} {f(key, w, 'drain_per_s', ',.0f'):>10} "
            f"{res.ratio(key, w, 'drain_per_s'):>6} "
            f"{f(key, 'drain-single', 'enqueue_per_s', ',.0f'):>10} "
            f"{f(key, 'drain-batch', 'enqueue_per_s', ',.0f'):>10} "
            f"{f(key, 'latency', 'p50_ms', '.2f'):>8} {f(key, 'latency', 'p99_ms', '.2f'):>8} "
            f"{f(key, 'io', 'drain_per_s', ',.0f'):>8} {f(key, 'rss', 'peak_rss_mb', ',.0f'):>7}"
        )
    lines.append(
        "drain: batch-queued where the library has a batch enqueue, else singly queued; "
        "xh: drain / hauler's on the same storage, workers in a process of their own where the "
        "peer's are (Redis peers: hauler on PostgreSQL)"
    )
    return "\n".join(lines)


def main() -> None:
    """Render the markdown and the chart again from a run's JSON (after a report change).

    python -m benches.compare.report benches/results/compare-<date>.json
    """
    import sys

    from benches.compare.harness import Run

    raw = Path(sys.argv[1])
    data = json.loads(raw.read_text())
    meta = data["meta"]
    settings: Settings = {k: (v[0], v[1], v[2], v[3]) for k, v in data["settings"].items()}
    runs = [Run(**r) for r in data["runs"]]
    meta.setdefault("repeat", 1)
    chart(raw.with_suffix(".png"), meta, settings, runs)
    raw.with_suffix(".md").write_text(markdown(meta, settings, runs))
    print(summary(settings, runs))


if __name__ == "__main__":
    main()
