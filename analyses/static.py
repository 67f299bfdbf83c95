"""Plotly figures to PNG with matplotlib: no kaleido, no browser.

:func:`save_png` is a small, generic converter for what :mod:`analyses.figures` draws:

- traces ``scatter`` (lines, markers, text; per-point colours and sizes, open symbols, dashes),
  ``bar`` (vertical or horizontal; ``barmode`` stack, group, overlay) and ``heatmap`` (Plotly
  colour scales, ``zmin``/``zmax``, colour bar), on numeric or category axes;
- subplots from the layout's axis ``domain``/``anchor`` entries (which ``make_subplots`` writes),
  ``matches`` for shared axes, ``log`` axes, ``autorange="reversed"``, ``range``, ``tickvals``;
- titles, axis titles, a legend placed like Plotly's (``x``, ``y``, anchors, orientation),
  ``layout.shapes`` (``line``, ``rect``: ``add_hline``/``add_vline``/``add_hrect``) and
  ``layout.annotations`` (with or without arrow), in ``data``, ``domain`` or ``paper`` coordinates.

Plotly's HTML subset in text becomes plain text (``<br>`` a line break, other tags dropped,
entities decoded); hover text is ignored. Sizes: Plotly pixels at 100 per inch, saved at
``dpi`` (150). Hidden-by-default traces and unlisted trace types are skipped.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from matplotlib import transforms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from probe.files import atomic_file

PX = 100.0  # Plotly pixels per inch
PT = 72.0 / PX  # points per Plotly pixel
SIZE = (900, 500)
MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}
GRID = "#e5e5e5"
DASHES = {"solid": "-", "dash": (0, (5, 3)), "dot": (0, (1.2, 2)), "dashdot": (0, (5, 2, 1.2, 2)),
          "longdash": (0, (9, 3)), "longdashdot": (0, (9, 2, 1.2, 2))}
SYMBOLS = {"circle": "o", "square": "s", "diamond": "D", "cross": "P", "x": "X", "triangle-up": "^",
           "triangle-down": "v", "triangle-left": "<", "triangle-right": ">", "star": "*", "hexagon": "h",
           "pentagon": "p", "line-ns": "|", "line-ew": "_"}


def save_png(fig: go.Figure | dict[str, Any], path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Render ``fig`` (a Plotly figure or its dict) to a PNG at ``path``, written atomically."""
    path = Path(path)
    fig = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    mfig = _Renderer(fig).render()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        mfig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.12, facecolor="white")
    return path


# --- values ----------------------------------------------------------------------------------

def plain(text: Any) -> str:
    """Plotly's HTML subset as plain matplotlib text (``$`` escaped so no mathtext)."""
    if text is None:
        return ""
    s = re.sub(r"<br\s*/?>", "\n", str(text), flags=re.IGNORECASE)
    s = html.unescape(re.sub(r"<[^<>]*>", "", s))
    return s.replace("$", r"\$")


def _arr(v: Any) -> np.ndarray | None:
    """A trace array: lists, tuples, numpy arrays, or Plotly's base64 ``{dtype, bdata, shape}``."""
    if v is None:
        return None
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = [int(s) for s in str(v.get("shape", a.size)).split(",")]
        return a.reshape(shape)
    return np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v


def _num(v: np.ndarray) -> np.ndarray:
    if v.dtype != object:
        return v.astype(float)
    return np.array([np.nan if x is None else float(x) for x in v.ravel()], dtype=float).reshape(v.shape)


def _is_text(v: np.ndarray | None) -> bool:
    return v is not None and v.dtype.kind in "OUS" and any(isinstance(x, str) for x in v.ravel())


def color(c: Any, default: Any = "#444444") -> Any:
    """A Plotly colour (``#hex``, CSS name, ``rgb()``, ``rgba()``) as a matplotlib RGBA tuple."""
    if c is None:
        return to_rgba(default)
    m = re.fullmatch(r"\s*rgba?\(([^)]*)\)\s*", str(c))
    if m:
        parts = [float(p) for p in m.group(1).split(",")]
        return (parts[0] / 255, parts[1] / 255, parts[2] / 255, parts[3] if len(parts) > 3 else 1.0)
    try:
        return to_rgba(c)
    except ValueError:
        return to_rgba(default)


def _colors(c: Any, n: int, default: Any) -> Any:
    a = _arr(c) if isinstance(c, (list, tuple, np.ndarray, dict)) else None
    if a is None:
        return color(c, default)
    return [color(x, default) for x in a.ravel()][:n]


def _cmap(scale: Any) -> Any:
    from plotly.colors import get_colorscale

    scale = get_colorscale(scale) if isinstance(scale, str) else scale or get_colorscale("Viridis")
    return LinearSegmentedColormap.from_list("plotly", [(float(p), color(c)) for p, c in scale])


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


# --- the renderer ----------------------------------------------------------------------------

class _Renderer:
    def __init__(self, fig: go.Figure) -> None:
        self.layout = fig.layout.to_plotly_json()
        self.template = fig.layout.template.layout.to_plotly_json() if fig.layout.template else {}
        self.traces = [t.to_plotly_json() for t in fig.data]
        w, h = self.layout.get("width") or SIZE[0], self.layout.get("height") or SIZE[1]
        m = {**MARGIN, **(self.layout.get("margin") or {})}
        self.size = (w, h)
        self.box = (m["l"] / w, m["b"] / h, 1 - m["r"] / w, 1 - m["t"] / h)
        self.fig = Figure(figsize=(w / PX, h / PX))
        FigureCanvasAgg(self.fig)
        l, b, r, t = self.box
        self.paper = transforms.Affine2D().scale(r - l, t - b).translate(l, b) + self.fig.transFigure
        self.colorway = self.layout.get("colorway") or self.template.get("colorway") or ["#636efa"]
        self.axes: dict[tuple[str, str], Any] = {}
        self.categories: dict[str, list[Any]] = {}
        self.legend: list[tuple[str, Any]] = []

    # layout of axes
    def _axis(self, name: str) -> dict[str, Any]:
        return self.layout.get(f"{name[0]}axis{name[1:]}") or {}

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = [(t.get("xaxis", "x"), t.get("yaxis", "y")) for t in self.traces]
        for key, ax in self.layout.items():
            if re.fullmatch(r"yaxis\d*", key) and ax.get("anchor", "x") != "free":
                pairs.append((ax.get("anchor", "x"), "y" + key[5:]))
        return list(dict.fromkeys(pairs)) or [("x", "y")]

    def _make_axes(self) -> None:
        l, b, r, t = self.box
        for xn, yn in self._pairs():
            x0, x1 = self._axis(xn).get("domain", [0, 1])
            y0, y1 = self._axis(yn).get("domain", [0, 1])
            ax = self.fig.add_axes((l + x0 * (r - l), b + y0 * (t - b), (x1 - x0) * (r - l), (y1 - y0) * (t - b)))
            ax.set_axisbelow(True)
            ax.grid(True, color=GRID, linewidth=0.8)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            for side in ("left", "bottom"):
                ax.spines[side].set_color("#bbbbbb")
            ax.tick_params(labelsize=9, colors="#444444", length=3)
            self.axes[(xn, yn)] = ax
        for (xn, yn), ax in self.axes.items():
            for name, share in ((xn, "sharex"), (yn, "sharey")):
                other = self._axis(name).get("matches")
                host = next((a for (ox, oy), a in self.axes.items() if other in (ox, oy) and a is not ax), None)
                if other and host is not None:
                    getattr(ax, share)(host)

    def _host(self, xref: str, yref: str) -> Any:
        xn, yn = xref.split()[0], yref.split()[0]
        for (ax_x, ax_y), ax in self.axes.items():
            if (xn in (ax_x, "paper")) and (yn in (ax_y, "paper")):
                return ax
        return next(iter(self.axes.values()))

    def _transform(self, ax: Any, xref: str, yref: str) -> Any:
        def one(ref: str, data: Any) -> Any:
            return self.paper if ref == "paper" else ax.transAxes if ref.endswith("domain") else data
        return transforms.blended_transform_factory(one(xref, ax.transData), one(yref, ax.transData))

    def _coords(self, axis: str, values: np.ndarray | None, n: int) -> np.ndarray:
        if values is None:
            return np.arange(n, dtype=float)
        if axis in self.categories or self._axis(axis).get("type") == "category" or _is_text(values):
            cats = self.categories.setdefault(axis, [])
            for v in values.ravel():
                if v not in cats:
                    cats.append(v)
            return np.array([cats.index(v) for v in values.ravel()], dtype=float)
        return _num(values).ravel()

    # traces
    def render(self) -> Figure:
        self._make_axes()
        bars: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for i, t in enumerate(self.traces):
            if t.get("visible") in (False, "legendonly"):
                continue
            kind = t.get("type", "scatter")
            ax = self.axes[(t.get("xaxis", "x"), t.get("yaxis", "y"))]
            default = self.colorway[i % len(self.colorway)]
            if kind in ("scatter", "scattergl"):
                self._scatter(ax, t, default)
            elif kind == "bar":
                bars.setdefault((t.get("xaxis", "x"), t.get("yaxis", "y")), []).append({**t, "_color": default})
            elif kind == "heatmap":
                self._heatmap(ax, t)
        for pair, group in bars.items():
            self._bars(self.axes[pair], pair, group)
        for shape in self.layout.get("shapes", ()):
            self._shape(shape)
        self._configure_axes()
        for note in self.layout.get("annotations", ()):
            self._annotation(note)
        self._legend()
        self._title()
        return self.fig

    def _scatter(self, ax: Any, t: dict[str, Any], default: Any) -> None:
        y = _arr(t.get("y"))
        x = _arr(t.get("x"))
        if y is None:
            return
        xs, ys = self._coords(t.get("xaxis", "x"), x, len(y)), self._coords(t.get("yaxis", "y"), y, len(y))
        mode = t.get("mode") or ("lines+markers" if len(ys) < 20 else "lines")
        line, marker = t.get("line") or {}, t.get("marker") or {}
        c = color(line.get("color") or (marker.get("color") if isinstance(marker.get("color"), str) else None)
                  or default)
        alpha = float(t.get("opacity", 1.0))
        lw = float(line.get("width", 2)) * PT
        ls = DASHES.get(line.get("dash", "solid"), "-")
        handle_kw: dict[str, Any] = {"color": c, "alpha": alpha, "linestyle": "none"}
        if "lines" in mode:
            ax.plot(xs, ys, color=c, lw=lw, linestyle=ls, alpha=alpha, zorder=2)
            handle_kw.update(linestyle=ls, lw=lw)
        size = _arr(marker.get("size")) if isinstance(marker.get("size"), (list, tuple, np.ndarray, dict)) else None
        msize = float(marker.get("size", 6)) if size is None else 6.0
        if "markers" in mode:
            symbol = str(marker.get("symbol", "circle"))
            opened = symbol.endswith("-open")
            mk = SYMBOLS.get(symbol.removesuffix("-open").removesuffix("-dot"), "o")
            mcol = _colors(marker.get("color"), len(ys), c) if marker.get("color") is not None else c
            edge = _get(marker, "line", "color")
            ew = float(_get(marker, "line", "width", default=0)) * PT
            s = (msize * PT) ** 2 if size is None else (_num(size) * PT) ** 2
            opacity = alpha * float(marker.get("opacity", 1.0))
            ax.scatter(xs, ys, s=s, marker=mk, alpha=opacity if opacity < 1 else None, zorder=3,
                       facecolors="none" if opened else mcol, edgecolors=mcol if opened else color(edge, "white") if edge else "face",
                       linewidths=max(ew, 1.2) if opened else ew)
            handle_kw.update(marker=mk, markersize=msize * PT, markerfacecolor="none" if opened else
                             (mcol if not isinstance(mcol, list) else c), markeredgecolor=mcol if not isinstance(mcol, list) else c)
        text = _arr(t.get("text"))
        if "text" in mode and text is not None:
            self._texts(ax, xs, ys, text, t, msize)
        self._add_legend(t, Line2D([], [], **handle_kw))

    def _texts(self, ax: Any, xs: np.ndarray, ys: np.ndarray, text: np.ndarray, t: dict[str, Any], msize: float) -> None:
        pos = str(t.get("textposition", "middle center"))
        v, _, h = pos.partition(" ")
        h = h or "center"
        gap = msize * PT / 2 + 2
        dx = {"left": -gap, "right": gap}.get(h, 0)
        dy = {"top": gap, "bottom": -gap}.get(v, 0)
        ha = {"left": "right", "right": "left"}.get(h, "center")
        va = {"top": "bottom", "bottom": "top"}.get(v, "center")
        font = t.get("textfont") or {}
        labels = text.ravel() if text.ndim else [text.item()] * len(xs)
        for x, y, s in zip(xs, ys, labels):
            if np.isfinite(x) and np.isfinite(y) and s is not None:
                ax.annotate(plain(s), (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=float(font.get("size", 10)) * PT * 1.1, color=color(font.get("color"), "#333333"),
                            zorder=4, annotation_clip=False)

    def _bars(self, ax: Any, pair: tuple[str, str], group: list[dict[str, Any]]) -> None:
        mode = self.layout.get("barmode", "group")
        n = len(group) if mode == "group" else 1
        width = 0.8 / n
        base: dict[float, float] = {}
        for j, t in enumerate(group):
            horizontal = t.get("orientation") == "h"
            pos_axis = pair[1] if horizontal else pair[0]
            vals = _arr(t.get("x") if horizontal else t.get("y"))
            if vals is None:
                continue
            pos = self._coords(pos_axis, _arr(t.get("y") if horizontal else t.get("x")), len(vals))
            vals = _num(vals).ravel()
            offset = (j - (n - 1) / 2) * width if mode == "group" else 0.0
            bottom = np.array([base.get(p, 0.0) for p in pos]) if mode in ("stack", "relative") else 0.0
            marker = t.get("marker") or {}
            c = _colors(marker.get("color"), len(vals), t["_color"]) if marker.get("color") is not None else color(t["_color"])
            alpha = float(t.get("opacity", 0.6 if mode == "overlay" else 1.0))
            draw = ax.barh if horizontal else ax.bar
            kw = {"left": bottom} if horizontal else {"bottom": bottom}
            draw(pos + offset, vals, width, color=c, alpha=alpha, zorder=2, **kw)
            if mode in ("stack", "relative"):
                for p, v in zip(pos, vals):
                    base[p] = base.get(p, 0.0) + (0.0 if np.isnan(v) else v)
            self._add_legend(t, Rectangle((0, 0), 1, 1, color=c if not isinstance(c, list) else color(t["_color"]), alpha=alpha))

    def _heatmap(self, ax: Any, t: dict[str, Any]) -> None:
        z = _num(_arr(t.get("z")))
        ny, nx = z.shape
        xs = self._coords(t.get("xaxis", "x"), _arr(t.get("x")), nx)
        ys = self._coords(t.get("yaxis", "y"), _arr(t.get("y")), ny)
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), z, cmap=_cmap(t.get("colorscale")), shading="flat",
                             vmin=t.get("zmin"), vmax=t.get("zmax"), zorder=1, rasterized=True)
        ax.grid(False)
        if t.get("showscale", True):
            bar = self.fig.colorbar(mesh, ax=ax, fraction=0.04, pad=0.02)
            bar.set_label(plain(_get(t, "colorbar", "title", "text")), fontsize=9)
            bar.ax.tick_params(labelsize=8)
            bar.outline.set_visible(False)

    # layout pieces
    def _configure_axes(self) -> None:
        done: set[str] = set()
        for (xn, yn), ax in self.axes.items():
            for name, which in ((xn, "x"), (yn, "y")):
                spec = self._axis(name)
                first = name not in done
                done.add(name)
                axis = ax.xaxis if which == "x" else ax.yaxis
                if spec.get("type") == "log" and getattr(ax, f"get_{which}scale")() != "log":
                    getattr(ax, f"set_{which}scale")("log")
                rng = spec.get("range")
                if rng and None not in rng:
                    lim = [10 ** v for v in rng] if spec.get("type") == "log" else rng
                    getattr(ax, f"set_{which}lim")(*lim)
                if spec.get("autorange") == "reversed" and first:
                    (ax.invert_xaxis if which == "x" else ax.invert_yaxis)()
                label = plain(_get(spec, "title", "text"))
                if label:
                    getattr(ax, f"set_{which}label")(label, fontsize=10, color="#333333")
                if name in self.categories:
                    self._category_ticks(ax, which, self.categories[name], spec)
                elif spec.get("tickvals") is not None:
                    vals = _num(_arr(spec["tickvals"]))
                    axis.set_ticks(vals)
                    text = spec.get("ticktext")
                    axis.set_ticklabels([plain(s) for s in text] if text is not None else [f"{v:g}" for v in vals])
                if spec.get("showticklabels") is False:
                    ax.tick_params(**{f"label{'bottom' if which == 'x' else 'left'}": False})
                if spec.get("tickfont", {}).get("size"):
                    ax.tick_params(axis=which, labelsize=spec["tickfont"]["size"] * PT * 1.2)

    def _category_ticks(self, ax: Any, which: str, cats: list[Any], spec: dict[str, Any]) -> None:
        labels = [plain(c) for c in cats]
        bbox = ax.get_position()
        inches = (bbox.width if which == "x" else bbox.height) * self.fig.get_size_inches()[0 if which == "x" else 1]
        longest = max((len(s) for s in labels), default=1)
        per = 0.13 if which == "y" or longest * 0.075 > inches / max(len(labels), 1) else longest * 0.075
        step = max(1, int(np.ceil(len(labels) * per / max(inches, 0.1))))
        ticks = list(range(0, len(labels), step))
        axis = ax.xaxis if which == "x" else ax.yaxis
        axis.set_ticks(ticks)
        axis.set_ticklabels([labels[i] for i in ticks])
        if which == "x" and longest * 0.075 * len(labels) > inches:
            ax.tick_params(axis="x", labelrotation=40)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        lo, hi = -0.5, len(labels) - 0.5
        if which == "y" and spec.get("autorange") == "reversed":
            lo, hi = hi, lo
        getattr(ax, f"set_{which}lim")(lo, hi)
        ax.grid(False, axis=which)

    def _shape(self, shape: dict[str, Any]) -> None:
        xref, yref = shape.get("xref", "x"), shape.get("yref", "y")
        ax = self._host(xref, yref)
        tr = self._transform(ax, xref, yref)
        line = shape.get("line") or {}
        c = color(line.get("color"), "#444444")
        lw = float(line.get("width", 2)) * PT
        ls = DASHES.get(line.get("dash", "solid"), "-")
        x0, x1, y0, y1 = (shape.get(k) for k in ("x0", "x1", "y0", "y1"))
        if shape.get("type", "line") == "line":
            ax.add_line(Line2D([x0, x1], [y0, y1], transform=tr, color=c, lw=lw, linestyle=ls, zorder=1.5))
        elif shape.get("type") == "rect":
            fill = color(shape.get("fillcolor"), (0, 0, 0, 0))
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, transform=tr, facecolor=fill,
                                   alpha=float(shape.get("opacity", 1.0)), edgecolor=c if line.get("width") else "none",
                                   lw=lw, zorder=0.5))

    def _annotation(self, note: dict[str, Any]) -> None:
        xref, yref = note.get("xref", "x"), note.get("yref", "y")
        ax = self._host(xref, yref)
        x, y = note.get("x"), note.get("y")
        if x is None or y is None:
            return
        if xref.split()[0] in self.categories and isinstance(x, str):
            x = self.categories[xref.split()[0]].index(x)
        if yref.split()[0] in self.categories and isinstance(y, str):
            y = self.categories[yref.split()[0]].index(y)
        for name, ref in (("x", xref), ("y", yref)):  # Plotly puts annotations on log axes in log10 units
            if ref.split()[-1] != "domain" and ref != "paper" and self._axis(ref).get("type") == "log":
                x, y = (10 ** float(x), y) if name == "x" else (x, 10 ** float(y))
        font = note.get("font") or {}
        arrow = note.get("showarrow", True)
        ha = {"left": "left", "right": "right"}.get(note.get("xanchor", "auto"), "center")
        va = {"top": "top", "bottom": "bottom"}.get(note.get("yanchor", "auto"), "center")
        off = (float(note.get("ax", -10)) * PT, -float(note.get("ay", -30)) * PT) if arrow else \
            (float(note.get("xshift", 0)) * PT, float(note.get("yshift", 0)) * PT)
        bg = note.get("bgcolor")
        c = color(font.get("color"), "#333333")
        ax.annotate(plain(note.get("text")), (x, y), xycoords=self._transform(ax, xref, yref), xytext=off,
                    textcoords="offset points", ha=ha, va=va, color=c,
                    fontsize=float(font.get("size", 12)) * PT * 1.1, annotation_clip=False, zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": color(bg), "ec": "none"} if bg else None,
                    arrowprops={"arrowstyle": "-|>", "color": c, "lw": 0.8, "shrinkA": 0, "shrinkB": 2} if arrow else None)

    def _add_legend(self, t: dict[str, Any], handle: Any) -> None:
        if t.get("showlegend") is False or not t.get("name"):
            return
        self.legend.append((plain(t["name"]), handle))

    def _legend(self) -> None:
        spec = self.layout.get("legend") or {}
        if self.layout.get("showlegend") is False or not self.legend or \
                (len(self.legend) < 2 and self.layout.get("showlegend") is not True):
            return
        labels, handles = zip(*self.legend)
        horizontal = spec.get("orientation") == "h"
        x = spec.get("x", 0 if horizontal else 1.02)
        y = spec.get("y", -0.1 if horizontal else 1)
        xa = spec.get("xanchor", "auto")
        xa = xa if xa != "auto" else ("left" if x <= 1 / 3 or x > 1 else "right" if x >= 2 / 3 else "center")
        ya = spec.get("yanchor", "auto")
        ya = ya if ya != "auto" else ("top" if y >= 2 / 3 else "bottom" if y <= 1 / 3 else "middle")
        loc = f"{ {'top': 'upper', 'bottom': 'lower', 'middle': 'center'}[ya] } {xa}".replace("center center", "center")
        width_in = self.fig.get_size_inches()[0] * 0.95
        ncol = len(labels)
        if horizontal:
            widths = [0.45 + 0.068 * len(s) for s in labels]
            while ncol > 1 and sum(sorted(widths)[-ncol:]) > width_in:
                ncol -= 1
        l, b, r, t = self.box
        self.fig.legend(handles, labels, loc=loc.strip(), bbox_to_anchor=(l + x * (r - l), b + y * (t - b)),
                        bbox_transform=self.fig.transFigure, ncol=ncol if horizontal else 1, frameon=False, fontsize=9,
                        handlelength=2.2, columnspacing=1.2, borderaxespad=0.2)

    def _title(self) -> None:
        text = plain(_get(self.layout, "title", "text"))
        if not text:
            return
        spec = self.layout["title"]
        x = spec.get("x", _get(self.template, "title", "x", default=0.5))
        ha = {"left": "left", "right": "right"}.get(spec.get("xanchor", "auto"), "center" if x == 0.5 else "left")
        renderer = self.fig.canvas.get_renderer()
        top = self.fig.get_tightbbox(renderer).y1 * self.fig.dpi
        y = (top + 8) / self.fig.bbox.height
        self.fig.text(x, y, text, ha=ha, va="bottom", fontsize=12.5, color="#222222", wrap=False)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around (sorted or not) centres: halfway between neighbours, half a step outside."""
    c = np.asarray(centers, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
