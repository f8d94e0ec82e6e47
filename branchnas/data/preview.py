"""Contact sheets of dataset samples with their labels (used by ``branchnas demo``).

Two steps, as every plot in branchnas: :func:`preview_panels` turns samples into plain
arrays (RGB images in [0, 1]) and a caption; :func:`plot_preview` draws them into Axes.
:func:`render_preview` does both and writes a PNG. matplotlib is imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import BranchnasError

__all__ = ["plot_preview", "preview_panels", "render_preview"]

_DENSE_ORDER = ("segmentation", "depth", "normals", "edges", "instance", "keypoints")


def _palette(n: int) -> np.ndarray:
    """n distinct RGB colours (golden-angle hues)."""
    h = (np.arange(n) * 0.618034) % 1.0
    s, v = 0.65, 0.95
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.choose(i, [v, q, p, p, t, v]),
        np.choose(i, [t, v, v, q, p, p]),
        np.choose(i, [p, p, t, v, v, q]),
    ], axis=-1)
    return table


def _colour_map(x: np.ndarray) -> np.ndarray:
    """Scalar map (NaN = black) to RGB with a blue-to-yellow ramp."""
    valid = np.isfinite(x)
    out = np.zeros(x.shape + (3,))
    if valid.any():
        lo, hi = np.percentile(x[valid], [1, 99])
        y = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
        ramp = np.stack([0.27 + 0.72 * y, 0.0 + 0.9 * y, 0.33 + 0.2 * np.sin(np.pi * y) - 0.2 * y],
                        axis=-1)
        out[valid] = np.clip(ramp[valid], 0, 1)
    return out


def _render_label(kind: str, lab: np.ndarray, spec: Dict[str, Any]) -> np.ndarray:
    if kind == "segmentation":
        pal = _palette(int(spec.get("num_classes", 256)))
        out = np.zeros(lab.shape + (3,))
        ok = (lab >= 0) & (lab < len(pal))
        out[ok] = pal[lab[ok]]
        return out
    if kind == "normals":
        return np.nan_to_num((lab.transpose(1, 2, 0) + 1) / 2, nan=0.0).clip(0, 1)
    if kind == "edges":
        return np.repeat(np.nan_to_num(lab[0], nan=0.0)[..., None], 3, -1).clip(0, 1)
    if kind == "instance":
        dy, dx = lab
        valid = np.isfinite(dy)
        mag = np.hypot(np.nan_to_num(dy), np.nan_to_num(dx))
        ang = (np.arctan2(np.nan_to_num(dy), np.nan_to_num(dx)) / (2 * np.pi)) % 1.0
        wheel = 0.5 + 0.5 * np.cos(2 * np.pi * (ang[..., None] + np.array([0, 1 / 3, 2 / 3])))
        col = wheel * (0.35 + 0.65 * np.clip(mag / max(mag.max(), 1e-9), 0, 1))[..., None]
        col[~valid] = 0
        return col
    return _colour_map(lab[0] if lab.ndim == 3 else lab)


def preview_panels(dataset: Dataset, n: int = 4, start: int = 0) -> List[Dict[str, Any]]:
    """Plain-data panels for ``n`` samples: the image and each dense label as RGB.

    Args:
        dataset: any branchnas dataset (items as in docs/internals.md, ``.tasks`` catalogue).
        n: number of samples.
        start: index of the first sample.

    Returns:
        One dict per sample: ``"panels"`` a list of (title, (H, W, 3) float array in [0, 1])
        and ``"caption"`` listing the image-level labels.

    Raises:
        BranchnasError: if the dataset is empty or ``n`` < 1.
    """
    if n < 1 or len(dataset) == 0:
        raise BranchnasError("preview needs n >= 1 and a non-empty dataset")
    tasks: Dict[str, Dict[str, Any]] = dict(getattr(dataset, "tasks", {}))
    dense = sorted(
        (t for t, s in tasks.items() if s.get("type") in _DENSE_ORDER),
        key=lambda t: _DENSE_ORDER.index(tasks[t]["type"]),
    )
    out = []
    for i in range(start, min(start + n, len(dataset))):
        item = dataset[i]
        img = item["image"].detach().float().cpu().numpy().transpose(1, 2, 0).clip(0, 1)
        panels = [("image", img)]
        for t in dense:
            if not item["present"].get(t, False):
                continue
            lab = item["labels"][t].detach().cpu().numpy()
            panels.append((t, _render_label(tasks[t]["type"], lab, tasks[t])))
        words = []
        for t, s in tasks.items():
            if t in dense or not item["present"].get(t, False):
                continue
            v = item["labels"][t]
            if s.get("type") == "classification":
                words.append(f"{t}={int(v)}")
            elif s.get("type") == "binary" and torch.isfinite(v) and float(v) > 0.5:
                words.append(t.removeprefix("attr_"))
        out.append({"panels": panels, "caption": ", ".join(words)})
    return out


def plot_preview(panels: Sequence[Dict[str, Any]], axes: Optional[Any] = None,
                 caption_words: int = 6) -> Any:
    """Draw :func:`preview_panels` output, one sample per row.

    Args:
        panels: from :func:`preview_panels`.
        axes: a 2-D array of Axes (rows × columns) to draw into; created if None.
        caption_words: how many image-level labels to print under each row's image.

    Returns:
        The 2-D array of Axes.
    """
    rows = len(panels)
    cols = max(len(p["panels"]) for p in panels)
    if axes is None:
        # lazy: drawing only; a figure on its own Agg canvas leaves pyplot's backend alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1.9 * cols, 2.1 * rows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
    axes = np.asarray(axes).reshape(rows, cols)
    for r, sample in enumerate(panels):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(sample["panels"]):
                title, arr = sample["panels"][c]
                ax.imshow(arr, interpolation="nearest")
                if r == 0:
                    ax.set_title(title, fontsize=8)
        words = sample["caption"].split(", ") if sample["caption"] else []
        if words:
            text = ", ".join(words[:caption_words]) + (" …" if len(words) > caption_words else "")
            axes[r, 0].text(0, -0.03, text, transform=axes[r, 0].transAxes, fontsize=5,
                            va="top", ha="left", clip_on=False)
    return axes


def render_preview(dataset: Dataset, n: int = 4, path: Union[str, Path] = "preview.png",
                   dpi: int = 110) -> Path:
    """Write a contact sheet (PNG) of ``n`` samples and their labels.

    Args:
        dataset: any branchnas dataset.
        n: number of samples (rows).
        path: output file.
        dpi: resolution of the PNG.

    Returns:
        The path written.

    Example:
        >>> from branchnas.data import ScenesDataset
        >>> ds = ScenesDataset("val", size=2, resolution=32, cache_dir=False)
        >>> render_preview(ds, 2, "/tmp/scenes.png").suffix   # doctest: +SKIP
        '.png'
    """
    panels = preview_panels(dataset, n)
    axes = plot_preview(panels)
    fig = axes[0, 0].figure
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.03, wspace=0.05, hspace=0.25)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
