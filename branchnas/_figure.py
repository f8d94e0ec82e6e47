"""Figures drawn off screen without touching the user's matplotlib backend."""

from __future__ import annotations

from typing import Any

__all__ = ["agg_figure"]


def agg_figure(**kw: Any) -> Any:
    """A :class:`matplotlib.figure.Figure` on its own Agg canvas (``kw`` go to ``Figure``).

    Library plots draw here instead of through ``pyplot``, so a user's interactive backend is
    never switched (``matplotlib.use`` is global) and no figure is left open in pyplot.

    Example:
        >>> fig = agg_figure(figsize=(2, 2))
        >>> ax = fig.add_subplot()
        >>> type(fig.canvas).__name__
        'FigureCanvasAgg'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig
