"""TensorBoard event files for a training run (optional: needs the ``tensorboard`` package).

The trainer hands every epoch's metrics record (the line it appends to ``metrics.jsonl``)
to :class:`TensorBoardLog`, which writes it as scalars into ``<run dir>/tensorboard/``, the
step being the epoch number (1-based, as in ``metrics.jsonl``). The tags:

* ``loss/total`` (the weighted training loss) and ``loss/<task>`` (each task's mean loss);
* ``loss_weight/<task>``: the weight each task's loss got that epoch (1 for ``equal``;
  DWA's weights; ``exp(-s)`` for uncertainty weighting);
* ``lr``: the learning rate at the epoch's first step;
* ``val/<task>/<metric>``: validation metrics, on the epochs that were evaluated;
* with the convergence rule (early stopping): ``holdout/<task>/<metric>``,
  ``holdout_loss/<task>``, ``holdout/score`` (the held-out learning curve) and
  ``holdout/gain`` (what the rule decides on);
* ``speed/images_per_s``: training throughput.

``metrics.jsonl`` stays the record a run is resumed from; the event file is a view of it.
On a resume the folder's old event files are replaced by one holding the records kept so
far, so each epoch appears once however often a run was interrupted (an epoch trained again
after the checkpoint is not logged twice, and one whose event was lost in a kill comes back).

Without the ``tensorboard`` package (``pip install branchnas[tensorboard]``) nothing is
written and the process logs that once.

Example:
    >>> import tempfile
    >>> board = TensorBoardLog(tempfile.mkdtemp())
    >>> board.log_epoch({"epoch": 1, "train_total": 0.5, "train_loss": {"seg": 0.5},
    ...                  "weights": {"seg": 1.0}, "lr": 0.01, "val": None})
    >>> board.close()
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

__all__ = ["TensorBoardLog", "epoch_scalars", "TENSORBOARD_DIR"]

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
"""The folder inside a run directory that holds its event files."""

_EVENT_PREFIX = "events.out.tfevents."
_told_unavailable = False  # "TensorBoard logging is off" is logged once per process


def epoch_scalars(record: Mapping[str, Any]) -> Dict[str, float]:
    """The scalars of one epoch's metrics record, by TensorBoard tag.

    Args:
        record: one line of ``metrics.jsonl`` (keys ``train_total``, ``train_loss``,
            ``weights``, ``lr``, ``val``, ``images_per_s``, and ``holdout``, ``holdout_loss``,
            ``holdout_score``, ``holdout_gain`` under the convergence rule; missing or None values are skipped,
            as are non-finite ones).

    Returns:
        ``{tag: value}`` in a fixed order (see the module docstring for the tags).
    """
    out: Dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)

    put("loss/total", record.get("train_total"))
    for task, value in (record.get("train_loss") or {}).items():
        put(f"loss/{task}", value)
    for task, value in (record.get("weights") or {}).items():
        put(f"loss_weight/{task}", value)
    put("lr", record.get("lr"))
    for split in ("val", "holdout"):
        for task, metrics in (record.get(split) or {}).items():
            for name, value in (metrics or {}).items():
                put(f"{split}/{task}/{name}", value)
    for task, value in (record.get("holdout_loss") or {}).items():
        put(f"holdout_loss/{task}", value)
    put("holdout/score", record.get("holdout_score"))
    put("holdout/gain", record.get("holdout_gain"))
    put("speed/images_per_s", record.get("images_per_s"))
    return out


def _summary_writer() -> Any:
    """torch's ``SummaryWriter`` class, or None (once logged) without the tensorboard package."""
    global _told_unavailable
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError when `tensorboard` is not installed
        if not _told_unavailable:
            log.info("TensorBoard logging is off (%s); pip install 'branchnas[tensorboard]' to "
                     "get event files in each run directory", exc)
            _told_unavailable = True
        return None
    return SummaryWriter


class TensorBoardLog:
    """Writes a run's epoch records as TensorBoard scalars (a no-op without tensorboard).

    Args:
        run_dir: the run directory; event files go to ``<run_dir>/tensorboard/``.
        history: the records of epochs already trained (a resumed run's ``metrics.jsonl``);
            any earlier event files are replaced by one holding exactly these.

    Attributes:
        log_dir: the event-file folder.
        enabled: False when the tensorboard package is missing.
    """

    def __init__(self, run_dir: Union[str, "os.PathLike[str]"],
                 history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer: Optional[Any] = None
        writer_cls = _summary_writer()
        self.enabled = writer_cls is not None
        if writer_cls is None:
            return
        history = list(history)
        stale = sorted(self.log_dir.glob(_EVENT_PREFIX + "*")) if self.log_dir.is_dir() else []
        for path in stale:  # rewritten below from metrics.jsonl, the record resume trusts
            path.unlink()
        # purge_step=1 also tells a TensorBoard that already read the old files to drop them
        self._writer = writer_cls(log_dir=str(self.log_dir),
                                  purge_step=1 if (stale or history) else None)
        # closes the file if the run stops with an exception (the trainer closes it otherwise)
        self._finalizer = weakref.finalize(self, self._writer.close)
        for record in history:
            self._add(record)
        self._writer.flush()

    def _add(self, record: Mapping[str, Any]) -> None:
        assert self._writer is not None
        step = int(record["epoch"])
        for tag, value in epoch_scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Write one epoch's record (step: ``record["epoch"]``) and flush it to disk."""
        if self._writer is None:
            return
        self._add(record)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._writer is not None:
            self._finalizer()
            self._writer = None
