"""Plotly figures to PNG, SVG or PDF with Plotly's own exporter (kaleido 1.x), in headless Chromium.

The static file is drawn by the same plotly.js as the interactive report, so it shows every trace
type and layout feature the report does. Kaleido 1.x drives an installed Chrome or Chromium (no
bundled browser): :func:`chrome_path` finds it (``$BROWSER_PATH``, else ``chromium``,
``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` or ``chrome`` on ``PATH``), and
it runs without the sandbox (choreographer's default, so it works as root). MathJax is off: the
page loads nothing from the network, like the report (which embeds no MathJax either).

Size: the figure's ``layout.width``/``height`` (or its template's) if set, else 900 x 500 Plotly
pixels, times ``scale`` (2: a 1800 x 1000 PNG). Every file is written to a temporary name beside
its target and renamed when complete, so a failure never leaves a half-written file.
Starting Chromium takes about 2 s; :func:`save_figures` renders a batch in one browser session.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from probe.errors import ProbeError
from probe.files import atomic_file

FORMATS = ("png", "svg", "pdf")
SIZE = (900, 500)  # width, height in Plotly pixels when the figure sets none
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL = ("static export needs Chrome or Chromium for Plotly's exporter (kaleido): "
           "as root run apt-get install -y chromium, or set BROWSER_PATH to a Chrome/Chromium binary")

Figurish = go.Figure | Mapping[str, Any]


def chrome_path() -> str | None:
    """The browser kaleido will drive: ``$BROWSER_PATH`` if set (None if it is not an executable
    file), else the first of :data:`BROWSERS` on ``PATH``; None when there is none."""
    if env := os.environ.get("BROWSER_PATH"):
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    return next((p for name in BROWSERS if (p := shutil.which(name))), None)


def save_figure(fig: Figurish, path: str | os.PathLike[str], format: str | None = None,
                scale: float = 2.0) -> Path:
    """Export ``fig`` to ``path`` as ``format`` (default: the path's suffix), one of
    :data:`FORMATS`, at ``scale`` times its layout size; creates the parent folder."""
    path = Path(path)
    return _export([(fig, path, _format(path, format))], scale)[0]


def save_figures(figs: Sequence[tuple[str, Figurish]] | Mapping[str, Figurish],
                 folder: str | os.PathLike[str], formats: Sequence[str] = ("png",),
                 scale: float = 2.0) -> list[Path]:
    """Export each ``(name, figure)`` to ``folder/name.<format>`` for every format, all in one
    Chromium session; every figure is rendered before any file is written, so a rendering
    failure writes nothing. Returns the paths in order (per figure, then per format)."""
    items = list(figs.items()) if isinstance(figs, Mapping) else list(figs)
    fmts = [_format(Path(f"*.{f}"), f) for f in formats]
    folder = Path(folder)
    return _export([(fig, folder / f"{name}.{fmt}", fmt) for name, fig in items for fmt in fmts], scale)


def check_ready(formats: Sequence[str] = ("png",)) -> tuple[str, ...]:
    """The formats, checked (each one of :data:`FORMATS`), once kaleido and a browser are found:
    call it before a long run so that a missing Chromium fails in a second, not after an hour."""
    fmts = tuple(_format(Path(f"*.{f}"), f) for f in formats)
    _kaleido()
    if chrome_path() is None:
        raise ProbeError(INSTALL)
    return fmts


def figure_names(sections: Sequence[Any]) -> list[tuple[str, go.Figure]]:
    """Every figure of every report section (anything with ``title`` and ``figures``) with a file
    name that sorts in report order: ``NN-<section title>-<i>``, e.g. ``03-ablation-1``."""
    figs = [(s.title, i, f) for s in sections for i, f in enumerate(s.figures)]
    return [(f"{n:02d}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{i + 1}", fig)
            for n, (title, i, fig) in enumerate(figs, 1)]


def figure_size(fig: Figurish) -> tuple[int, int]:
    """Width and height in Plotly pixels: the layout's, else its template's, else :data:`SIZE`."""
    layout = _as_dict(fig).get("layout", {})
    template = layout.get("template", {}).get("layout", {})
    return (int(layout.get("width") or template.get("width") or SIZE[0]),
            int(layout.get("height") or template.get("height") or SIZE[1]))


def _format(path: Path, format: str | None) -> str:
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ProbeError(f"cannot export a figure as {fmt or 'a file without suffix'!r} ({path.name}): "
                         f"the format must be one of {', '.join(FORMATS)}")
    return fmt


def _kaleido() -> Any:
    try:
        import kaleido
    except ImportError as e:
        raise ProbeError(f"static export needs kaleido 1.x: pip install 'kaleido>=1.0' ({e})") from None
    return kaleido


def _as_dict(fig: Figurish) -> dict[str, Any]:
    return fig.to_dict() if isinstance(fig, go.Figure) else go.Figure(fig).to_dict()


def _export(jobs: list[tuple[Figurish, Path, str]], scale: float) -> list[Path]:
    """Render every job in one kaleido session, then write each file atomically."""
    kaleido = _kaleido()
    from kaleido.errors import ChromeNotFoundError

    browser = chrome_path()
    if browser is None:
        raise ProbeError(INSTALL)
    specs = []
    for fig, path, fmt in jobs:
        data = _as_dict(fig)
        width, height = figure_size(data)
        specs.append((data, {"format": fmt, "width": width, "height": height, "scale": scale}))

    async def render() -> list[bytes]:
        async with kaleido.Kaleido(path=browser, n=1, mathjax=False) as k:
            return [await k.calc_fig(data, opts=opts) for data, opts in specs]

    try:  # in a thread of its own, so it works where an event loop already runs (Jupyter)
        with ThreadPoolExecutor(1) as pool:
            images = pool.submit(asyncio.run, render()).result()
    except ChromeNotFoundError:
        raise ProbeError(f"{INSTALL} (kaleido found no browser at {browser})") from None
    except Exception as e:  # noqa: BLE001 - kaleido/choreographer/JS errors become one line
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)  # choreographer: tuples
        first = (text.strip().splitlines() or [""])[0]
        raise ProbeError(f"static export with kaleido ({browser}) failed: {type(e).__name__}: {first}") from e
    for (_, path, _), image in zip(jobs, images):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                tmp.write_bytes(image)
        except OSError as e:
            raise ProbeError(f"cannot write {path}: {e.strerror or e}") from e
    return [path for _, path, _ in jobs]
