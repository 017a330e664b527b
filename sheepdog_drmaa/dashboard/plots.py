"""The sweep page's charts, drawn by Matplotlib as inline SVG (the only module importing it).

SVG drawn here needs no script and no network to show, in the live page as in the report file,
and keeps its text as text (so that a chart's labels can be searched and read by a test).
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("svg")  # no display, no GUI toolkit: the dashboard runs on a head node
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402

from .data import SweepView  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.dpi": 96})
WIDTH, HEIGHT = 6.0, 2.4  # inches
DONE, FAILED, RUNNING, ASKED = "#2a7f62", "#c0392b", "#2f6db5", "#8e44ad"


def _figure() -> Figure:
    return Figure(figsize=(WIDTH, HEIGHT), layout="constrained")


def _svg(figure: Figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg")
    text = out.getvalue()
    return text[text.index("<svg"):]  # no XML prologue: the SVG goes inline in the page


def throughput(view: SweepView) -> str:
    """Tasks done over time, with the rate and the ETA in the title."""
    figure = _figure()
    axes = figure.add_subplot()
    if view.completions:
        start = view.completions[0]
        minutes = [(t - start) / 60 for t in view.completions]
        axes.step(minutes, range(1, len(minutes) + 1), where="post", color=DONE)
    axes.set_xlabel("minutes since the first task was done")
    axes.set_ylabel("tasks done")
    axes.set_ylim(0, max(view.row.tasks, 1))
    axes.axhline(view.row.tasks, color="#999", linewidth=0.8, linestyle="--")
    axes.set_title("throughput" + (f" - ETA {_duration(view.eta_seconds)}" if view.eta_seconds else ""),
                   loc="left")
    return _svg(figure)


def durations(view: SweepView) -> str:
    """A histogram of how long each task took."""
    figure = _figure()
    axes = figure.add_subplot()
    if view.durations:
        axes.hist(view.durations, bins=min(40, max(len(view.durations) // 2, 1)), color=DONE)
    axes.set_xlabel("seconds per task")
    axes.set_ylabel("tasks")
    axes.set_title("task durations", loc="left")
    return _svg(figure)


def memory(view: SweepView) -> str:
    """Each attempt's peak memory against the memory= asked per worker: how to size the next request."""
    figure = _figure()
    axes = figure.add_subplot()
    peaks_mib = [kb / 1024 for kb in view.peaks_kb]
    if peaks_mib:
        axes.hist(peaks_mib, bins=min(40, max(len(peaks_mib) // 2, 1)), color=RUNNING)
    if view.memory_asked:
        asked = view.memory_asked / (1 << 20)
        axes.axvline(asked, color=ASKED, linewidth=2)
        axes.annotate(f"memory= asked: {_size(view.memory_asked)}", (asked, 1), xycoords=("data", "axes fraction"),
                      xytext=(-4, -12), textcoords="offset points", ha="right", color=ASKED)
    axes.set_xlabel("peak memory per task (MiB)")
    axes.set_ylabel("tasks")
    top = max(peaks_mib) if peaks_mib else 0.0
    axes.set_title(f"peak memory: largest {top:.0f} MiB"
                   + ("" if view.memory_asked else ", no memory= asked"), loc="left")
    return _svg(figure)


def timeline(view: SweepView, now: float) -> str:
    """Which worker ran which task, when: a row per worker, a bar per attempt, coloured by how it ended."""
    workers = sorted({segment.worker for segment in view.timeline})
    rows = {worker: position for position, worker in enumerate(workers)}
    figure = Figure(figsize=(WIDTH, max(1.6, 0.22 * len(workers) + 0.9)), layout="constrained")
    axes = figure.add_subplot()
    if view.timeline:
        start = min(segment.start for segment in view.timeline)
        for segment in view.timeline:
            end = segment.end if segment.end is not None else now
            colour = DONE if segment.cause == "result" else RUNNING if segment.cause is None else FAILED
            axes.broken_barh([((segment.start - start) / 60, max((end - segment.start) / 60, 0.002))],
                             (rows[segment.worker] - 0.4, 0.8), color=colour)
    axes.set_yticks(range(len(workers)), labels=workers if len(workers) <= 40 else [""] * len(workers))
    axes.set_xlabel("minutes")
    axes.set_title("workers: green done, blue running, red failed", loc="left")
    return _svg(figure)


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
