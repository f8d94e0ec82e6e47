"""Where pretrained backbone weights live on disk, and a one-line error when they are missing.

Weights are read from the caches the libraries themselves use, so a file fetched once by
torchvision, timm or ``huggingface-cli`` is found again:

* torchvision weights (``weights = "IMAGENET1K_V1"`` on a ``resnet*`` backbone):
  ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints``, by default
  ``~/.cache/torch/hub/checkpoints``), the file named by torchvision's weights URL;
* timm weights (``pretrained = true`` on a ``timm:<model>`` backbone): the Hugging Face hub
  cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``)
  holding the model's ``hf_hub_id`` repository (``model.safetensors`` or
  ``pytorch_model.bin``), else ``torch.hub.get_dir()/checkpoints/<file>`` for models timm
  still serves from a URL.

A file that is not there is downloaded into that cache when the machine is online (and
``HF_HUB_OFFLINE`` is not set); otherwise :func:`locate_timm_weights` /
:func:`locate_torchvision_weights` raise a one-line :class:`BranchnasError` naming the file
and where to put it. Nothing here unpickles: the files are loaded later with safetensors or
``torch.load(weights_only=True)`` (``timm_backbone._read_weights``, before timm sees them).
Accounting never needs these files (it measures blocks on the meta device).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import urlparse

from ..errors import BranchnasError

__all__ = ["hf_hub_cache_dir", "torch_hub_checkpoints_dir", "locate_timm_weights",
           "locate_torchvision_weights"]

logger = logging.getLogger(__name__)

_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def torch_hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision (and timm's URL weights) cache files."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _download_url(url: str, dest: Path) -> Optional[str]:
    """Download ``url`` to ``dest``; the reason as text when it fails."""
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=False)
    except Exception as e:  # network errors come in many types (URLError, HTTPError, ...)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def locate_torchvision_weights(weights: Any, what: str) -> str:
    """The local file of a torchvision weights enum entry (downloaded if need be).

    Args:
        weights: a torchvision ``WeightsEnum`` member (it has ``.url``).
        what: names the weights in the error (``"resnet50 IMAGENET1K_V1"``).

    Raises:
        BranchnasError: when the file is absent and cannot be downloaded.
    """
    path = torch_hub_checkpoints_dir() / _url_file(weights.url)
    if path.is_file():
        return str(path)
    reason = "offline (HF_HUB_OFFLINE is set)" if _offline() else _download_url(weights.url, path)
    if reason is None and path.is_file():
        return str(path)
    raise BranchnasError(
        f"weights {what} are not on this machine and could not be downloaded ({reason}); "
        f"put {path.name} (from {weights.url}) at {path}"
    )


def locate_timm_weights(model: str) -> str:
    """The local file of timm's pretrained weights for ``model`` (``name`` or ``name.tag``).

    Raises:
        BranchnasError: when timm has no pretrained weights for the model, or the file is
            absent and cannot be downloaded (naming the file and where to put it).
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is None:
        raise BranchnasError(
            f"timm has no pretrained weights for {model!r}; set pretrained = false or name a "
            "tagged model (see timm.list_pretrained())"
        )
    hub_id = cfg.hf_hub_id
    url = cfg.url or ""
    cache = hf_hub_cache_dir()
    wanted: List[str] = []
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(_HF_FILES)
        for fname in names:
            hit = try_to_load_from_cache(hub_id, fname, cache_dir=str(cache))
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        repo_dir = cache / ("models--" + hub_id.replace("/", "--"))
        wanted.append(f"{names[0]} at {repo_dir}/snapshots/<revision>/ "
                      f"(huggingface-cli download {hub_id} {names[0]})")
    if url:
        path = torch_hub_checkpoints_dir() / _url_file(url)
        if path.is_file():
            return str(path)
        wanted.append(f"{path.name} (from {url}) at {path}")
    if not wanted:
        raise BranchnasError(f"timm lists no weights file for {model!r}; set pretrained = false")
    reason: Optional[str] = "offline (HF_HUB_OFFLINE is set)" if _offline() else None
    if reason is None and hub_id:
        from huggingface_hub import hf_hub_download

        fname = cfg.hf_hub_filename or _HF_FILES[0]
        try:
            return str(hf_hub_download(hub_id, fname, cache_dir=str(cache)))
        except Exception as e:  # hub/network errors come in many types
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    elif reason is None and url:
        path = torch_hub_checkpoints_dir() / _url_file(url)
        reason = _download_url(url, path)
        if reason is None and path.is_file():
            return str(path)
    raise BranchnasError(
        f"pretrained weights of timm model {model!r} are not on this machine and could not be "
        f"downloaded ({reason}); put {' or '.join(wanted)}"
    )
