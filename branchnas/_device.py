"""The one device resolver (used by training, affinity and the config resolver)."""

from __future__ import annotations

from typing import Union

import torch

from .errors import BranchnasError

__all__ = ["resolve_device", "DeviceLike"]

DeviceLike = Union[str, torch.device, None]


def resolve_device(device: DeviceLike = None) -> torch.device:
    """The compute device: ``None`` picks CUDA when available, else the CPU.

    Raises:
        BranchnasError: for a device string torch does not understand or CUDA without a GPU.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BranchnasError(f"unknown device {device!r} ({exc}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BranchnasError(f"device {device!r} asked for but CUDA is not available; use 'cpu' or leave device unset")
    return dev
