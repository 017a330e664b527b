"""The dashboard's pages from their templates (the only module importing Jinja2): the sweeps list
and a sweep's page, live (refreshed from the JSON endpoint) or as a self-contained report."""
from __future__ import annotations

import time
from collections.abc import Callable

import jinja2

from . import plots
from .data import SweepRow, SweepView

REFRESH_SECONDS = 3.0

_ENVIRONMENT = jinja2.Environment(loader=jinja2.PackageLoader("sheepdog_drmaa.dashboard", "templates"),
                                  autoescape=True, trim_blocks=True, lstrip_blocks=True)


def age(seconds: float) -> str:
    """A duration as people read it: 42 s, 7 min, 3.5 h, 2.0 d."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _render(template: str, link: Callable[[str], str], **values: object) -> str:
    return _ENVIRONMENT.get_template(template).render(
        link=link, age=age, refresh_ms=int(REFRESH_SECONDS * 1000),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"), **values)


def sweeps_page(rows: list[SweepRow], store_path: str, link: Callable[[str], str], source: str) -> str:
    return _render("sweeps.html", link, rows=rows, store_path=store_path, source=source, live=True)


def sweeps_table(rows: list[SweepRow], link: Callable[[str], str]) -> str:
    return _render("sweeps_table.html", link, rows=rows)


def _charts(view: SweepView) -> dict[str, str]:
    return {"throughput": plots.throughput(view), "memory": plots.memory(view),
            "durations": plots.durations(view), "timeline": plots.timeline(view, time.time())}


def sweep_page(view: SweepView, link: Callable[[str], str], source: str | None) -> str:
    """The sweep's page; live when ``source`` (its JSON endpoint) is given, else a static report."""
    return _render("sweep.html", link, view=view, charts=_charts(view), source=source or "", live=source is not None)


def sweep_body(view: SweepView, link: Callable[[str], str]) -> str:
    """The part of the sweep's page that the live page refreshes."""
    return _render("sweep_body.html", link, view=view, charts=_charts(view))
