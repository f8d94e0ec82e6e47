"""Helpers shared by the backbone and head registries (private)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..errors import BranchnasError


def check_hw(input_hw: Sequence[int]) -> Tuple[int, int]:
    """``(H, W)`` as two positive ints, or a one-line :class:`BranchnasError`."""
    try:
        h, w = (int(v) for v in input_hw)
    except (TypeError, ValueError):
        raise BranchnasError(
            f"input size must be two positive integers (H, W), got {input_hw!r}"
        ) from None
    if h <= 0 or w <= 0:
        raise BranchnasError(f"input size must be positive (H, W), got {input_hw!r}")
    return h, w


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit/zero affine and fresh stats for batch norm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def freeze_value(value: Any) -> Any:
    """A hashable form of a kwargs value (lists → tuples, dicts → sorted item tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze_value(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze_value(v)) for k, v in value.items()))
    return value


def option_names(factory: Callable[..., Any], reserved: Sequence[str] = ()) -> Optional[List[str]]:
    """Keyword options ``factory`` accepts (minus ``reserved``); None if it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [
        n
        for n, p in params.items()
        if p.kind is not inspect.Parameter.VAR_POSITIONAL and n not in reserved
    ]


def check_kwargs(
    factory: Callable[..., Any],
    kwargs: Dict[str, Any],
    what: str,
    reserved: Sequence[str] = (),
) -> None:
    """Raise a one-line :class:`BranchnasError` for keyword arguments ``factory`` lacks.

    Args:
        factory: the callable the kwargs are meant for.
        kwargs: the user's options.
        what: names the target in the message (``"backbone 'resnet50'"``).
        reserved: parameters the caller fills itself, which the user may not give.
    """
    known = option_names(factory, reserved)
    if known is None:
        return
    for key in kwargs:
        if key not in known:
            raise BranchnasError(
                f"unknown option {key!r} for {what}; "
                f"choose from: {', '.join(known) if known else '(none)'}"
            )
