"""Dense (per-pixel) task types: segmentation, depth, normals, edges, instance, keypoints.

Formats (B = batch): predictions are ``(B, C, H, W)``; targets are ``(B, H, W)`` int64 for
segmentation and ``(B, C, H, W)`` float for the rest. Invalid pixels are 255
(segmentation) or NaN (the float targets). Metric values expressed as fractions (mIoU,
pixel accuracy, % within an angle, ODS F) are reported in percent, as in the papers'
tables; errors are in the target's units (depth units, degrees, pixels).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BranchnasError
from .base import REQUIRED, Meter, Task, _fmt_shape, _is_int, register_task_type

__all__ = [
    "SegmentationTask",
    "DepthTask",
    "NormalsTask",
    "EdgesTask",
    "InstanceTask",
    "KeypointsTask",
]

_NAN = math.nan

logger = logging.getLogger(__name__)


class _DenseFloatTask(Task):
    """A dense task whose target is a float ``(B, C, H, W)`` map with NaN for "no label"."""

    dense = True
    default_head = "fcn"
    invalid = _NAN
    channels: int = 1

    @property
    def out_channels(self) -> int:
        return self.channels

    def _check_shapes(self, pred: Tensor, target: Tensor) -> None:
        c = self.channels
        if pred.dim() != 4 or pred.shape[1] != c:
            raise BranchnasError(
                f"{self.type} task {self.name!r}: pred must have shape (B, {c}, H, W), got "
                f"{_fmt_shape(pred.shape)}; check the head's out_channels"
            )
        if tuple(target.shape) != tuple(pred.shape):
            raise BranchnasError(
                f"{self.type} task {self.name!r}: target shape {_fmt_shape(target.shape)} "
                f"does not match pred shape {_fmt_shape(pred.shape)}; targets are "
                f"(B, {c}, H, W) at the prediction's resolution"
            )
        if not target.is_floating_point():
            raise BranchnasError(
                f"{self.type} task {self.name!r}: target must be a float tensor with NaN for "
                f"missing labels, got dtype {target.dtype}"
            )

    def _target_shape(self, batch: Optional[int], hw: Tuple[int, int]) -> Tuple[int, ...]:
        shape = (self.channels, *hw)
        return shape if batch is None else (batch, *shape)

    def _labelled(self, target: Tensor) -> Tensor:
        return torch.isfinite(target).all(dim=1)

    @staticmethod
    def _clean(target: Tensor, valid: Tensor) -> Tensor:
        """``target`` with unlabelled pixels set to 0, so no NaN reaches the graph."""
        return torch.where(valid.unsqueeze(1), target, torch.zeros((), dtype=target.dtype,
                                                                   device=target.device))


# --------------------------------------------------------------------- segmentation
@register_task_type("segmentation")
class SegmentationTask(Task):
    """Semantic segmentation: per-pixel cross-entropy; mIoU and pixel accuracy.

    Params:
        num_classes: number of classes C (>= 2).
        ignore_index: label of unlabelled pixels (default 255).

    Metrics (percent): ``miou`` from a confusion matrix over the whole dataset; a class
    that appears neither in the ground truth nor in the predictions of the whole dataset
    has an undefined IoU (0/0) and is left out of the mean. ``pixel_acc`` is the fraction
    of labelled pixels predicted correctly.
    """

    metric_directions = {"miou": True, "pixel_acc": True}
    primary_metric = "miou"
    param_defaults = {"num_classes": REQUIRED, "ignore_index": 255}
    dense = True
    default_head = "fcn"
    invalid = 255
    target_dtype = torch.int64

    def _validate_params(self) -> None:
        c = self.params["num_classes"]
        if not _is_int(c) or c < 2:
            raise BranchnasError(
                f"segmentation task {self.name!r}: num_classes must be an integer >= 2, got {c!r}"
            )
        ig = self.params["ignore_index"]
        if not _is_int(ig) or 0 <= ig < c:
            raise BranchnasError(
                f"segmentation task {self.name!r}: ignore_index must be an integer outside "
                f"[0, {c}), got {ig!r}"
            )
        self.params["num_classes"] = int(c)
        self.params["ignore_index"] = int(ig)
        self.invalid = int(ig)  # the marker empty_target writes

    @property
    def out_channels(self) -> int:
        return self.params["num_classes"]

    def _check_shapes(self, pred: Tensor, target: Tensor) -> None:
        c = self.out_channels
        if pred.dim() != 4 or pred.shape[1] != c:
            raise BranchnasError(
                f"segmentation task {self.name!r}: pred must be logits of shape (B, {c}, H, W), "
                f"got {_fmt_shape(pred.shape)}; check the head's out_channels"
            )
        expected = (pred.shape[0], *pred.shape[2:])
        if tuple(target.shape) != tuple(expected):
            raise BranchnasError(
                f"segmentation task {self.name!r}: target must have shape "
                f"{_fmt_shape(expected)} (B, H, W), got {_fmt_shape(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise BranchnasError(
                f"segmentation task {self.name!r}: target must hold integer class ids "
                f"(int64), got dtype {target.dtype}"
            )

    def _target_shape(self, batch: Optional[int], hw: Tuple[int, int]) -> Tuple[int, ...]:
        return hw if batch is None else (batch, *hw)

    def _labelled(self, target: Tensor) -> Tensor:
        return target != self.params["ignore_index"]

    def _check_labels(self, target: Tensor, mask: Tensor) -> None:
        c = self.out_channels
        bad = mask & ((target < 0) | (target >= c))
        if bool(bad.any()):
            raise BranchnasError(
                f"segmentation task {self.name!r}: target holds class id "
                f"{int(target[bad][0])} outside [0, {c}); mark unlabelled pixels with "
                f"{self.params['ignore_index']}"
            )

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        safe = torch.where(valid, target.long(), torch.zeros((), dtype=torch.long,
                                                             device=target.device))
        return F.cross_entropy(pred, safe, reduction="none")

    def meter(self) -> "SegmentationMeter":
        return SegmentationMeter(self)


class SegmentationMeter(Meter):
    """Confusion matrix over the whole dataset → mIoU and pixel accuracy (percent)."""

    def reset(self) -> None:
        c = self.task.out_channels
        self.confusion = torch.zeros(c, c, dtype=torch.int64)

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        c = self.task.out_channels
        truth = target[valid].long()
        guess = pred.argmax(dim=1)[valid]
        counts = torch.bincount(truth * c + guess, minlength=c * c)
        self.confusion += counts.reshape(c, c).cpu()

    def compute(self) -> Dict[str, float]:
        conf = self.confusion.double()
        total = conf.sum()
        if total == 0:
            return {"miou": _NAN, "pixel_acc": _NAN}
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        seen = union > 0
        miou = (tp[seen] / union[seen]).mean().item() * 100.0
        return {"miou": miou, "pixel_acc": (tp.sum() / total).item() * 100.0}


# ---------------------------------------------------------------------------- depth
@register_task_type("depth")
class DepthTask(_DenseFloatTask):
    """Monocular depth: L1 loss on valid pixels; absolute and relative error.

    A pixel is valid where the target is finite and > 0 (NaN marks "no label"; a depth
    of 0 is also "no measurement" in NYUv2/Cityscapes conventions, and the relative
    error divides by the target).

    Metrics: ``abs_err`` = mean |pred − gt|, ``rel_err`` = mean |pred − gt| / gt, both over
    every valid pixel of the dataset.
    """

    metric_directions = {"abs_err": False, "rel_err": False}
    primary_metric = "abs_err"  # the papers' depth error (Cityscapes D, NYUv2 abs)
    channels = 1

    def _labelled(self, target: Tensor) -> Tensor:
        t = target[:, 0]
        return torch.isfinite(t) & (t > 0)

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return (pred - self._clean(target, valid))[:, 0].abs()

    def meter(self) -> "DepthMeter":
        return DepthMeter(self)


class DepthMeter(Meter):
    """Sums of absolute and relative errors over valid pixels."""

    def reset(self) -> None:
        self.sum_abs = 0.0
        self.sum_rel = 0.0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        p = pred[:, 0][valid].double()
        t = target[:, 0][valid].double()
        err = (p - t).abs()
        self.sum_abs += err.sum().item()
        self.sum_rel += (err / t).sum().item()
        self.count += int(valid.sum())

    def compute(self) -> Dict[str, float]:
        if self.count == 0:
            return {"abs_err": _NAN, "rel_err": _NAN}
        return {"abs_err": self.sum_abs / self.count, "rel_err": self.sum_rel / self.count}


# -------------------------------------------------------------------------- normals
_NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
_MEDIAN_BIN_DEG = 1e-3


@register_task_type("normals")
class NormalsTask(_DenseFloatTask):
    """Surface normals: a loss on unit vectors; angle statistics in degrees.

    The prediction is normalised to unit length inside (loss and metrics); the target is
    normalised too, so slightly off-unit stored normals do not bias the angles. A pixel is
    valid where all three target components are finite and not all zero.

    Params:
        distance: ``"l1"`` (default): per pixel ``|n̂ − n|₁`` summed over the three
            components. Chosen because its gradient does not vanish as the angle goes to
            zero, so the small errors that the median and within-11.25° measure keep being
            pushed down; ``1 − cos θ`` (``"cosine"``, MTAN's dot-product loss) has a gradient
            ∝ sin θ that fades near the optimum.
        exact_median_limit: the meter keeps every angle (float32) up to this many valid
            pixels (default 2**23 = 32 MiB) and reports the exact median. Beyond it, the
            angles are folded into a histogram of 0.001° bins and the median is interpolated
            inside its bin (error < 0.001°). Mean and the within-t° counts are always exact.

    Metrics: ``mean`` and ``median`` angle (degrees) over every valid pixel of the dataset,
    ``within_11.25``, ``within_22.5``, ``within_30``: percent of valid pixels with an angle
    strictly below the threshold.
    """

    metric_directions = {
        "mean": False,
        "median": False,
        "within_11.25": True,
        "within_22.5": True,
        "within_30": True,
    }
    primary_metric = "mean"  # mean angle, as in the NYUv2 tables
    param_defaults = {"distance": "l1", "exact_median_limit": 2**23}
    channels = 3

    def _validate_params(self) -> None:
        if self.params["distance"] not in ("l1", "cosine"):
            raise BranchnasError(
                f"normals task {self.name!r}: unknown distance {self.params['distance']!r}; "
                f"choose 'l1' or 'cosine'"
            )
        limit = self.params["exact_median_limit"]
        if not _is_int(limit) or limit < 0:
            raise BranchnasError(
                f"normals task {self.name!r}: exact_median_limit must be an integer >= 0, "
                f"got {limit!r}"
            )

    def _labelled(self, target: Tensor) -> Tensor:
        return torch.isfinite(target).all(dim=1) & (target.abs().sum(dim=1) > 0)

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        unit_pred = F.normalize(pred, dim=1)
        unit_target = F.normalize(self._clean(target, valid), dim=1)
        if self.params["distance"] == "l1":
            return (unit_pred - unit_target).abs().sum(dim=1)
        return 1.0 - (unit_pred * unit_target).sum(dim=1)

    def meter(self) -> "NormalsMeter":
        return NormalsMeter(self)


class NormalsMeter(Meter):
    """Angle sum, threshold counts, and the angles themselves (or a fine histogram)."""

    def reset(self) -> None:
        self.sum_angle = 0.0
        self.count = 0
        self.within = [0 for _ in _NORMAL_THRESHOLDS]
        self.angles: List[Tensor] = []
        self.n_kept = 0
        self.histogram: Optional[Tensor] = None

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        p = F.normalize(pred.double(), dim=1).permute(0, 2, 3, 1)[valid]
        t = F.normalize(target.double(), dim=1).permute(0, 2, 3, 1)[valid]
        cos = (p * t).sum(dim=1).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        self.sum_angle += angle.sum().item()
        self.count += angle.numel()
        for i, thr in enumerate(_NORMAL_THRESHOLDS):
            self.within[i] += int((angle < thr).sum())
        angle = angle.cpu()
        if self.histogram is None and self.n_kept + angle.numel() <= self.task.params[
            "exact_median_limit"
        ]:
            self.angles.append(angle.float())
            self.n_kept += angle.numel()
            return
        if self.histogram is None:
            logger.info(
                "normals task %r: more than %d valid pixels; the median now comes from a "
                "%g-degree histogram", self.task.name, self.task.params["exact_median_limit"],
                _MEDIAN_BIN_DEG,
            )
            n_bins = int(round(180.0 / _MEDIAN_BIN_DEG))
            self.histogram = torch.zeros(n_bins, dtype=torch.int64)
            for kept in self.angles:
                self._add_to_histogram(kept.double())
            self.angles = []
            self.n_kept = 0
        self._add_to_histogram(angle)

    def _add_to_histogram(self, angle: Tensor) -> None:
        assert self.histogram is not None
        n_bins = self.histogram.numel()
        idx = torch.floor(angle / _MEDIAN_BIN_DEG).long().clamp(0, n_bins - 1)
        self.histogram += torch.bincount(idx, minlength=n_bins)

    def _median(self) -> float:
        if self.histogram is None:
            return float(np.median(torch.cat(self.angles).double().numpy()))
        # Order statistic r (0-based) lies in the bin where the cumulative count passes r;
        # place it uniformly inside that bin. numpy's median averages ranks (n-1)//2, n//2.
        cum = torch.cumsum(self.histogram, 0)

        def order_stat(r: int) -> float:
            b = int(torch.searchsorted(cum, torch.tensor(r, dtype=cum.dtype), right=True))
            before = int(cum[b - 1]) if b > 0 else 0
            inside = int(self.histogram[b])
            return (b + (r - before + 0.5) / inside) * _MEDIAN_BIN_DEG

        n = self.count
        return 0.5 * (order_stat((n - 1) // 2) + order_stat(n // 2))

    def compute(self) -> Dict[str, float]:
        keys = list(self.task.metrics)
        if self.count == 0:
            return {k: _NAN for k in keys}
        out = {"mean": self.sum_angle / self.count, "median": self._median()}
        for thr, n in zip(_NORMAL_THRESHOLDS, self.within):
            out[f"within_{thr:g}"] = 100.0 * n / self.count
        return out


# ---------------------------------------------------------------------------- edges
@register_task_type("edges")
class EdgesTask(_DenseFloatTask):
    """Edge detection: class-balanced binary cross-entropy; ODS F-measure and BCE.

    Loss (HED, Xie & Tu 2015): per valid pixel with logit x and label y,
    ``−[β·y·log σ(x) + (1−β)·(1−y)·log(1−σ(x))]``, averaged over valid pixels. Edges are
    rare, so positives get the large weight β = fraction of non-edge pixels. β is computed
    over the valid pixels of the present samples of the batch (as the multi-task
    literature's balanced loss does; HED uses one image), so with ``reduction="none"``
    every sample is weighted with its batch's β. A fixed ``pos_weight`` replaces it.

    Params:
        pos_weight: fixed β in (0, 1), or None (default) for the batch's non-edge fraction.
        thresholds: size T of the probability grid k/(T+1), k = 1..T, for ODS (default 99).

    Metrics: ``odsf`` (percent): the best F-measure over the threshold grid, with
    true/false positive counts summed over the whole dataset before F is computed
    (optimal dataset scale). Pixels are matched exactly, without the distance tolerance of
    the BSDS benchmark. ``bce``: plain (unweighted) binary cross-entropy averaged over
    every valid pixel of the dataset. Targets may be soft in [0, 1]; for ``odsf`` a pixel
    is an edge where the target is ≥ 0.5.
    """

    # Taskonomy's table reports an L1 edge error we do not compute; ODS F is the measure the
    # edge literature (and Maninis et al.'s Δm) uses.
    metric_directions = {"odsf": True, "bce": False}
    primary_metric = "odsf"
    param_defaults = {"pos_weight": None, "thresholds": 99}
    channels = 1

    def _validate_params(self) -> None:
        w = self.params["pos_weight"]
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w < 1.0
        ):
            raise BranchnasError(
                f"edges task {self.name!r}: pos_weight must be None or a number in (0, 1), "
                f"got {w!r}"
            )
        t = self.params["thresholds"]
        if not _is_int(t) or t < 1:
            raise BranchnasError(
                f"edges task {self.name!r}: thresholds must be an integer >= 1, got {t!r}"
            )

    def _labelled(self, target: Tensor) -> Tensor:
        return torch.isfinite(target[:, 0])

    def _check_labels(self, target: Tensor, mask: Tensor) -> None:
        t = target[:, 0]
        if bool((mask & ((t < 0) | (t > 1))).any()):
            raise BranchnasError(
                f"edges task {self.name!r}: labelled target values must lie in [0, 1] "
                f"(1 = edge); mark unlabelled pixels with NaN"
            )

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        x = pred[:, 0]
        y = self._clean(target, valid)[:, 0].to(x.dtype)
        if self.params["pos_weight"] is None:
            with torch.no_grad():
                n = valid.sum()
                negatives = torch.where(valid, 1.0 - y, torch.zeros_like(y)).sum()
                beta = torch.where(n > 0, negatives / n.clamp(min=1), torch.full_like(negatives,
                                                                                      0.5))
        else:
            beta = torch.tensor(float(self.params["pos_weight"]), dtype=x.dtype, device=x.device)
        return -(beta * y * F.logsigmoid(x) + (1.0 - beta) * (1.0 - y) * F.logsigmoid(-x))

    def meter(self) -> "EdgesMeter":
        return EdgesMeter(self)


class EdgesMeter(Meter):
    """Edge / non-edge pixel counts per probability bin of the threshold grid, and BCE sum."""

    def reset(self) -> None:
        n = self.task.params["thresholds"]
        self.thresholds = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
        # bin b holds pixels whose probability is >= exactly b thresholds
        self.hist_pos = torch.zeros(n + 1, dtype=torch.int64)
        self.hist_neg = torch.zeros(n + 1, dtype=torch.int64)
        self.sum_bce = 0.0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        x = pred[:, 0][valid].double()
        y = target[:, 0][valid].double()
        self.sum_bce += F.binary_cross_entropy_with_logits(x, y, reduction="sum").item()
        self.count += x.numel()
        prob = torch.sigmoid(x)
        bins = torch.searchsorted(self.thresholds.to(prob.device), prob, right=True)
        edge = y >= 0.5
        n = self.hist_pos.numel()
        self.hist_pos += torch.bincount(bins[edge], minlength=n).cpu()
        self.hist_neg += torch.bincount(bins[~edge], minlength=n).cpu()

    def compute(self) -> Dict[str, float]:
        if self.count == 0:
            return {"odsf": _NAN, "bce": _NAN}
        # pixels predicted as edges at threshold k (0-based) are those in bins > k
        tp = torch.flip(torch.cumsum(torch.flip(self.hist_pos, [0]), 0), [0])[1:].double()
        fp = torch.flip(torch.cumsum(torch.flip(self.hist_neg, [0]), 0), [0])[1:].double()
        fn = self.hist_pos.sum().double() - tp
        denom = 2 * tp + fp + fn
        f = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
        return {"odsf": f.max().item() * 100.0, "bce": self.sum_bce / self.count}


# ------------------------------------------------------------------------- instance
@register_task_type("instance")
class InstanceTask(_DenseFloatTask):
    """Instance segmentation as offset regression (Kendall et al., 2018).

    Every pixel of an instance regresses the vector (dy, dx), in pixels, to its instance's
    centre; non-instance pixels are NaN. Loss and metric use the L1 norm of the error
    vector, ``|dy − dy*| + |dx − dx*|``, per instance pixel.

    Metrics: ``offset_err``: that error averaged over every instance pixel of the dataset
    (the paper's I(Px)).
    """

    metric_directions = {"offset_err": False}
    primary_metric = "offset_err"
    channels = 2

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return (pred - self._clean(target, valid)).abs().sum(dim=1)

    def meter(self) -> "InstanceMeter":
        return InstanceMeter(self)


class InstanceMeter(Meter):
    """Sum of per-pixel offset L1 errors."""

    def reset(self) -> None:
        self.sum_err = 0.0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        err = (pred.double() - target.double()).abs().sum(dim=1)[valid]
        self.sum_err += err.sum().item()
        self.count += err.numel()

    def compute(self) -> Dict[str, float]:
        return {"offset_err": self.sum_err / self.count if self.count else _NAN}


# ------------------------------------------------------------------------ keypoints
@register_task_type("keypoints")
class KeypointsTask(_DenseFloatTask):
    """Keypoint heatmap regression (Taskonomy's 2D keypoints): L1 loss; mean abs error.

    Metrics: ``abs_err``: mean |pred − gt| over every valid pixel of the dataset.
    """

    metric_directions = {"abs_err": False}
    primary_metric = "abs_err"
    channels = 1

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return (pred - self._clean(target, valid))[:, 0].abs()

    def meter(self) -> "KeypointsMeter":
        return KeypointsMeter(self)


class KeypointsMeter(Meter):
    """Sum of absolute errors over valid pixels."""

    def reset(self) -> None:
        self.sum_abs = 0.0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        err = (pred[:, 0].double() - target[:, 0].double()).abs()[valid]
        self.sum_abs += err.sum().item()
        self.count += err.numel()

    def compute(self) -> Dict[str, float]:
        return {"abs_err": self.sum_abs / self.count if self.count else _NAN}
