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
        BranchnasError: for a device string torch does not understand, CUDA without a GPU, a
            GPU index this machine does not have, or a device type torch cannot use here.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise BranchnasError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BranchnasError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise BranchnasError(f"--device {device}: this machine has {count} GPU(s); use cuda:0..cuda:{count - 1}")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return dev
    raise BranchnasError(f"--device {device!r} is not supported here; use cpu or cuda[:N]")
