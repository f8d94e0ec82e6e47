"""The run layout: where every file of a run's output directory lives (one owner for each path).

A pipeline run (``branchnas run --out OUT``), the training commands (``train``, ``baseline``,
``train-single``), ``tune`` and ``validate`` all write under one output directory. Every path
below it is built here, by :class:`RunLayout`; docs/internals.md lists each file with its
format, its writer and its readers::

    OUT/
      pipeline.json                   the resolved run options (run/demo)
      single/<task>/                  a single-task network's run directory (RunDir)
      affinity-<measure>.npz, .json   the affinity tensor and its sidecar
      search.json                     the search's pick per budget
      search/<budget-name>.json       each picked tree (Tree JSON), trained as trees/<name>
      trees/<name>/                   a BranchedNet's run directory (validate: <tree>-s<seed>)
      baselines/<name>/               a baseline's run directory
      tuned/<space>/<slug>.json       tuned settings of a model (+ .journal, <slug>/trial-NNN/)
      plots/                          pareto.png, pareto.csv, affinity plots, the data preview
      summary.json                    what the run found (paths in it relative to OUT)
      report.html, report.md          the report

Paths that files inside ``OUT`` store about other files inside it are relative to ``OUT``
(:meth:`RunLayout.relative`), so a run directory can be moved or copied and still be read
(:meth:`RunLayout.resolve` reads them back).

Example:
    >>> layout = RunLayout("runs/scenes")
    >>> layout.tree("budget-1.2M").as_posix()
    'runs/scenes/trees/budget-1.2M'
    >>> layout.relative(layout.affinity("rsa"))
    'affinity-rsa.npz'
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import BranchnasError

__all__ = ["RunLayout", "ValidationFiles", "default_out", "model_slug"]

PathLike = Union[str, "os.PathLike[str]"]

RUNS_ROOT = Path("runs")  # where output directories go when no --out is given


def default_out(space_name: str, profile: Optional[str] = None, kind: Optional[str] = None) -> Path:
    """The output directory used when none is given.

    ``runs/<space>`` (profile ``full`` or none), ``runs/<space>-<profile>`` otherwise;
    ``kind="validation"`` puts it under ``runs/validation/`` (always with the profile).
    """
    if kind:
        return RUNS_ROOT / kind / f"{space_name}-{profile or 'full'}"
    return RUNS_ROOT / (space_name if profile in (None, "full") else f"{space_name}-{profile}")


def model_slug(model: Any) -> str:
    """A file-name-safe name for a model id (``single:<task>``, ``tree:<path>``, a baseline) or
    a ``Tree``: a tree is named by a hash of its JSON, so the same tree gets the same name
    wherever its file lies (``tree:<path>`` reads the file)."""
    from ..tree import Tree

    if isinstance(model, Tree):
        return "tree-" + hashlib.sha256(model.dumps().encode("utf-8")).hexdigest()[:10]
    kind, sep, arg = str(model).partition(":")
    if kind == "tree" and sep:
        try:
            text = Tree.load(arg).dumps()
        except BranchnasError:
            text = arg
        return "tree-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(model)).strip("-")
    if not slug:
        raise BranchnasError(
            f"model id {model!r} is empty; give e.g. single:<task>, tree:<file> or shared"
        )
    return slug


class _File:
    """A fixed file of a layout, ``<root>/<relative path>`` (read as an attribute)."""

    def __init__(self, relative: str, doc: str) -> None:
        self.relative = relative
        self.__doc__ = f"``{relative}``: {doc}"

    def __get__(self, layout: Any, owner: Any = None) -> Any:
        return self if layout is None else layout.root / self.relative


@dataclass(frozen=True)
class RunLayout:
    """Every path under one run's output directory.

    Args:
        root: the output directory (``--out``).
    """

    root: Path

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------ run directories
    def single(self, task: str) -> Path:
        """``single/<task>/``: the single-task network of ``task`` (training.single names it)."""
        from ..training.single import single_run_dir

        return single_run_dir(self.root, task).path

    @property
    def singles(self) -> Path:
        """``single/``: the parent of every single-task run."""
        return self.single("_").parent

    def tree(self, name: str) -> Path:
        """``trees/<name>/``: the run directory of a BranchedNet."""
        return self.root / "trees" / name

    def baseline(self, name: str) -> Path:
        """``baselines/<name>/``: the run directory of a baseline."""
        return self.root / "baselines" / name

    # ------------------------------------------------------------------ stage files
    def affinity(self, measure: str = "rsa") -> Path:
        """``affinity-<measure>.npz`` (its JSON sidecar: :meth:`affinity_sidecar`)."""
        return self.root / f"affinity-{measure}.npz"

    def affinity_sidecar(self, measure: str = "rsa") -> Path:
        """``affinity-<measure>.json``: how the affinity was made."""
        return self.affinity(measure).with_suffix(".json")

    pipeline_json = _File("pipeline.json", "the resolved options of ``run``/``demo``")
    search_json = _File("search.json", "the search's pick per budget")
    summary_json = _File("summary.json", "what the run found (written last by ``run``, read by ``report``)")
    plots = _File("plots", "every figure of the run")
    pareto_png = _File("plots/pareto.png", "parameters vs Δm of every trained model")
    pareto_csv = _File("plots/pareto.csv", "the Pareto plot's points")
    preview_png = _File("plots/scenes-preview.png", "the demo's picture of the embedded benchmark")
    report_html = _File("report.html", "the self-contained report")
    report_md = _File("report.md", "the report as markdown")

    def frontier_png(self, kind: str) -> Path:
        """``plots/frontier-<kind>.png``: ``search --frontier``'s cost vs params (or FLOPs) plot."""
        return self.root / "plots" / f"frontier-{kind}.png"

    def search_tree(self, name: str) -> Path:
        """``search/<name>.json``: a picked tree (Tree JSON)."""
        return self.root / "search" / f"{name}.json"

    # ------------------------------------------------------------------ tuning
    def tuned_dir(self, space_name: str) -> Path:
        """``tuned/<space>/``: every tuning of models of one space."""
        return self.root / "tuned" / space_name

    def tuned(self, space_name: str, model: Any) -> Path:
        """``tuned/<space>/<slug>.json``: the tuned settings of a model (id or ``Tree``)."""
        return self.tuned_dir(space_name) / f"{model_slug(model)}.json"

    def tuning_journal(self, space_name: str, model: Any) -> Path:
        """``tuned/<space>/<slug>.journal``: the optuna study when no storage is given."""
        return self.tuned_dir(space_name) / f"{model_slug(model)}.journal"

    def tuning_trial(self, space_name: str, model: Any, index: int) -> Path:
        """``tuned/<space>/<slug>/trial-NNN/``: one trial (a run directory)."""
        return self.tuned_dir(space_name) / model_slug(model) / f"trial-{index:03d}"

    # ------------------------------------------------------------------ --force
    def clear_outputs(self) -> None:
        """Remove the cached work of a run here, so it is done again (``--force``).

        Run directories (``single/``, ``trees/``, ``baselines/``) are removed through
        :meth:`RunDir.clear`, which refuses a folder that is no run directory, and the
        affinity files; tuned settings (``tuned/``, an input) and files this package does
        not name are kept. The other files (search, plots, summary, report) are rewritten
        by every run anyway.
        """
        from ..training.rundir import RunDir

        for parent in (self.singles, self.root / "trees", self.root / "baselines"):
            if parent.is_dir():
                for run in sorted(parent.iterdir()):
                    RunDir(run).clear()
        for f in [*self.root.glob("affinity-*.npz"), *self.root.glob("affinity-*.json")]:
            f.unlink()

    # ------------------------------------------------------------------ stored paths
    def relative(self, path: PathLike) -> str:
        """``path`` as stored in this run's files: relative to the root (POSIX), or as given
        when it lies outside the root (a file the user pointed at)."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, stored: PathLike, stored_root: Optional[PathLike] = None) -> Path:
        """A path read from this run's files, as a usable path.

        Relative paths are relative to the root. Older runs stored paths as given (absolute,
        or relative to the working directory of the run); those are used when they exist,
        else re-rooted here through ``stored_root`` (the root recorded with them), so a
        moved run directory still reads.
        """
        p = Path(stored)
        if not p.is_absolute() and (self.root / p).exists():
            return self.root / p
        if p.exists():
            return p
        if stored_root is not None:
            try:
                return self.root / p.relative_to(Path(stored_root))
            except ValueError:
                pass
        return p if p.is_absolute() else self.root / p


@dataclass(frozen=True)
class ValidationFiles:
    """The files ``branchnas validate`` writes into its results folder (``--results-dir``).

    Args:
        root: the results folder (default ``results/validation``).
    """

    root: Path

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    def table(self, name: str) -> Path:
        """``<name>.csv`` for ``trees``, ``seeds``, ``correlation`` and ``regret``."""
        return self.root / f"{name}.csv"

    cost_vs_delta_m_png = _File("cost_vs_delta_m.png", "clustering cost vs Δm per parameter count")
    regret_png = _File("regret.png", "regret of each strategy per budget")
    summary_md = _File("SUMMARY.md", "the study's numbers")
