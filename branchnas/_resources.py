"""Where the data shipped inside the package lives (search spaces, affinity tensors).

They are package data under ``branchnas/resources/``; :mod:`importlib.resources` finds them
in an editable install and in an installed wheel alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["shipped_resource_dir"]


def shipped_resource_dir(name: str) -> Path:
    """The directory of shipped resource ``name`` (``"search_spaces"`` or ``"affinity"``).

    Example:
        >>> (shipped_resource_dir("search_spaces") / "scenes.toml").is_file()
        True
    """
    # pip installs a wheel as files (never as a zip), so the traversable is a real directory.
    return Path(str(resources.files("branchnas") / "resources" / name))
