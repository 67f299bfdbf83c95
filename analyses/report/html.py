"""One self-contained, offline HTML report from Plotly figures, and its JSON twin.

The page inlines plotly.js exactly once (about 4.8 MB) and every figure with
``include_plotlyjs=False``, so it opens without a network in about a second. Every string a
caller supplies (header, titles, texts, table cells) is escaped with :func:`html.escape`;
figure JSON is escaped by plotly itself (``<``, ``>`` and ``/`` become ``\\u003c`` … inside
the ``<script>``), and :func:`_figure_html` refuses a fragment where that ever stops being
true, so a token such as ``</script>`` in a hover text cannot end the script element.

:func:`write_report` writes ``report.html`` and ``results.json`` atomically; see its docstring.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.offline

from probe.files import scratch_folder

REPORT_NAME = "report.html"
RESULTS_NAME = "results.json"

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fafafa; color: #1f2328;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff;
  box-shadow: 0 0 0 1px #e5e7eb; min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 26px; margin: 8px 0 16px; }
h2 { font-size: 20px; margin: 40px 0 8px; padding-top: 8px; border-top: 1px solid #e5e7eb; }
p { max-width: 75ch; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid #eef0f2; vertical-align: top; }
th { font-weight: 600; color: #57606a; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { width: 10em; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #f3f4f6; padding: 1px 4px; border-radius: 4px; word-break: break-all; }
nav ol { margin: 4px 0 0; padding-left: 22px; }
nav a { color: #0969da; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.figure { margin: 12px 0 20px; }
.warning { margin: 12px 0; padding: 8px 14px; background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; }
.warning ul { margin: 4px 0; padding-left: 20px; }
"""


@dataclass
class Section:
    """One part of the report: a title, a sentence or two of plain text, figures, an optional table.

    ``table`` is a list of rows (dicts); the columns are the keys in order of first appearance.
    """

    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    table: list[dict[str, Any]] | None = None


def render_html(header: Mapping[str, str], sections: list[Section], warnings: Sequence[str] = ()) -> str:
    """The whole page: header rows (key/value), a banner with ``warnings`` (results that are
    fragile, e.g. a massive activation carried by few windows), a table of contents, then the sections.

    Figure divs get stable ids ``fig-<section-slug>-<i>`` (``i`` from 0); sections get
    ``sec-<section-slug>``; a repeated title gets ``-2``, ``-3``… appended to its slug.
    """
    esc = html.escape
    title = "probe report" + (f" — {header['model']}" if "model" in header else "")
    slugs = _unique_slugs([s.title for s in sections])
    meta = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{_header_value(str(k), str(v))}</td></tr>" for k, v in header.items()
    )
    banner = ("" if not warnings else '<div class="warning" role="alert"><strong>Fragile results</strong><ul>'
              + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    toc = "".join(f'<li><a href="#sec-{slug}">{esc(s.title)}</a></li>' for s, slug in zip(sections, slugs))
    body = "".join(_section_html(s, slug) for s, slug in zip(sections, slugs))
    # No '</script' may occur inside a script element; plotly.js has none today, but stay safe.
    plotlyjs = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<main>
<h1>{esc(title)}</h1>
<table class="meta">{meta}</table>
{banner}
<nav><strong>Contents</strong><ol>{toc}</ol></nav>
{body}
</main>
</body>
</html>
"""


def write_report(
    out_dir: str | os.PathLike[str], header: Mapping[str, str], sections: list[Section], results: Mapping[str, Any],
    extra: Callable[[Path], None] | None = None, warnings: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/results.json`` atomically; return the report's path.

    Both files are built in a temporary sibling directory (:func:`probe.files.scratch_folder`: same
    parent, hence same file system) and moved into place only when both are complete. If ``out_dir``
    does not exist the whole temporary directory is renamed to it (one atomic step). Otherwise
    the files are moved with :func:`os.replace`, ``results.json`` first and ``report.html``
    last: the report is the commit point, so a present new report always has its results next
    to it, and Ctrl-C during the two renames is deferred until both are done (only a hard kill
between them can pair an old report with new results). Any exception
    or KeyboardInterrupt before that leaves the previous report untouched (or nothing) and
    removes the temporary directory.

    ``results`` is made JSON-safe by :func:`to_jsonable`: NaN becomes ``null`` (no value),
    ±inf become the strings ``"inf"`` / ``"-inf"`` (a real outcome, e.g. the perplexity of a
    destroyed model, that strict JSON cannot hold as a number).

    ``warnings`` go into the banner at the top of the page (:func:`render_html`).

    ``extra(folder)``, when given, writes further files (e.g. PNG figures) into the temporary
    folder; they are moved into place with the two files, before ``report.html``.
    """
    out = Path(out_dir)
    with scratch_folder(out) as tmp:
        _write_synced(tmp / RESULTS_NAME, json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n")
        _write_synced(tmp / REPORT_NAME, render_html(header, sections, warnings))
        if extra is not None:
            extra(tmp)
        with _deferred_sigint():
            if not out.exists():
                os.rename(tmp, out)
            else:
                names = sorted(p.name for p in tmp.iterdir() if p.name not in (RESULTS_NAME, REPORT_NAME))
                for name in (*names, RESULTS_NAME, REPORT_NAME):
                    os.replace(tmp / name, out / name)
    return out / REPORT_NAME


def new_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if nothing is there yet; a run never writes over an earlier one."""
    from probe.errors import ProbeError

    out = Path(path)
    if out.exists():
        raise ProbeError(f"{out} exists; choose a new --out folder")
    return out


def write_csv(path: Path, rows: list[Mapping[str, Any]]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file with a header line."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: NaN → None, ±inf → ``"inf"``/``"-inf"``; numpy and torch
    scalars/arrays via ``tolist()``; objects with ``to_dict()`` and dataclasses via their fields;
    tuples and sets → lists; paths → strings. Anything else is a TypeError naming the type."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"results hold a {type(value).__name__}, which has no JSON form; convert it first")


def _section_html(section: Section, slug: str) -> str:
    esc = html.escape
    parts = [f'<section id="sec-{slug}">', f"<h2>{esc(section.title)}</h2>"]
    if section.text:
        parts.append(f"<p>{esc(section.text)}</p>")
    parts += [f'<div class="figure">{_figure_html(fig, f"fig-{slug}-{i}")}</div>' for i, fig in enumerate(section.figures)]
    if section.table:
        parts.append(_table_html(section.table))
    parts.append("</section>")
    return "\n".join(parts)


def _figure_html(fig: go.Figure, div_id: str) -> str:
    """A ``<div>`` and the ``<script>`` that draws it; plotly.js must already be on the page."""
    fragment = fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True, "displaylogo": False}
    )
    if fragment.lower().count("</script") != fragment.lower().count("<script"):
        raise ValueError(f"figure {div_id}: its JSON would end the <script> element early (unescaped '</script')")
    return fragment


def _table_html(rows: list[dict[str, Any]]) -> str:
    esc = html.escape
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{esc(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"<td>{html.escape(str(value))}</td>"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td class="num">{html.escape(text)}</td>'


def _header_value(key: str, value: str) -> str:
    return f"<code>{html.escape(value)}</code>" if key.lower() in {"command", "cmd"} else html.escape(value)


def _unique_slugs(titles: list[str]) -> list[str]:
    used: set[str] = set()
    slugs = []
    for title in titles:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        slug, n = base, 1
        while slug in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug)
        slugs.append(slug)
    return slugs


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the duration of the block, then raise it.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
