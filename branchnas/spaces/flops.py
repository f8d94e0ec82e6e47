"""Parameter and FLOP measurement on the meta device.

Every number the accounting uses is measured here, the same way, so that per-block and
per-head numbers add up exactly to what the built network costs:

* parameters: ``sum(p.numel())`` of a module built on the ``meta`` device (no memory,
  no initialisation cost);
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` around one forward pass of a
  batch of one on the ``meta`` device. The counter counts matrix products and
  convolutions (2 FLOPs per multiply-add); normalisation, activations, pooling and
  interpolation count zero. FLOPs measured this way are additive over sub-modules, which
  is what makes ``Σ_d |P_d| · flops(block d) + Σ heads`` exact.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "measure_flops", "default_device", "on_meta"]


def count_params(module: nn.Module) -> int:
    """Number of parameter elements in ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


def default_device() -> torch.device:
    """The device new tensors land on right now (honours ``with torch.device(...)``)."""
    return torch.empty(()).device


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Call ``build()`` with the meta device as default device and return its module."""
    with torch.device("meta"):
        return build()


def measure_flops(
    module: nn.Module,
    input_shape: Sequence[int],
    call: Callable[[nn.Module, torch.Tensor], Any] = lambda m, x: m(x),
) -> Tuple[int, torch.Tensor]:
    """FLOPs of one forward pass of a meta-device ``module`` on a meta input.

    Args:
        module: a module whose parameters live on the meta device.
        input_shape: the full input shape, batch dimension included.
        call: how to call the module (heads take an extra ``out_hw`` argument).

    Returns:
        ``(flops, output)`` where ``output`` is the meta output tensor (for its shape).
    """
    x = torch.empty(tuple(int(s) for s in input_shape), device="meta")
    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter:
            out = call(module, x)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops()), out
