"""Show a result's figure in Jupyter: ``probe.show(result)``.

Generic on purpose (``probe`` never imports ``analyses``): anything with a ``.figure()`` method
returning a Plotly figure, or a figure itself. :class:`Figured` gives result classes the same
display when they are the last expression of a cell.

A result class and the module that draws it stay one-way: the figure module imports the result
and registers its drawing with :func:`draws`; the result module never imports its figures.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

_DRAWERS: dict[type, Callable[[Any], Any]] = {}
F = TypeVar("F", bound=Callable[[Any], Any])


def draws(cls: type) -> Callable[[F], F]:
    """Register the decorated function as ``cls().figure()`` (and of its subclasses)."""

    def register(fn: F) -> F:
        _DRAWERS[cls] = fn
        return fn

    return register


def figure_of(obj: Any) -> Any:
    """``obj.figure()`` when ``obj`` has one, else ``obj`` if it is a Plotly figure."""
    import plotly.graph_objects as go

    fig = obj.figure() if callable(getattr(obj, "figure", None)) else obj
    if not isinstance(fig, go.Figure):
        raise TypeError(f"show() needs a Plotly figure or an object with .figure(), not {type(obj).__name__}")
    return fig


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def show(obj: Any) -> Any:
    """Display the figure of ``obj`` inline when running under IPython/Jupyter (returns None);
    elsewhere return the figure (call ``.show()`` or ``.write_html()`` on it)."""
    fig = figure_of(obj)
    if not _in_ipython():
        return fig
    from IPython.display import display

    display(fig)
    return None


class Figured:
    """Mixin for result objects with ``figure()``: Jupyter renders the figure (through Plotly's
    own renderers, which load plotly.js once per notebook) instead of the dataclass repr."""

    def figure(self) -> Any:
        """The figure registered for this class (or a base class) with :func:`draws`."""
        for cls in type(self).__mro__:
            if cls in _DRAWERS:
                return _DRAWERS[cls](self)
        raise NotImplementedError(f"no figure is registered for {type(self).__name__}")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.figure()._repr_mimebundle_(include, exclude)

    def _repr_html_(self) -> str:
        """For front-ends that only take HTML: the figure with plotly.js inline (works offline)."""
        return self.figure().to_html(full_html=False, include_plotlyjs=True)
