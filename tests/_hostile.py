"""Helpers of the hostile-input suite (tests/test_hostile.py): a workspace per case, the CLI run
in-process, and the contract every hostile input must meet."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Set, Tuple

from branchnas._resources import shipped_resource_dir
from branchnas.cli import main

SCENES_TOML = (shipped_resource_dir("search_spaces") / "scenes.toml").read_text()
SHIPPED_AFFINITY = shipped_resource_dir("affinity") / "scenes.npz"
MARKER = "EXECUTED"


class Exploit:
    """Unpickling this creates the file ``path``: proof that a loader ran code from a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Workspace:
    """A case's sandbox: ``inp/`` for the hostile inputs, ``out/`` (absent) for outputs, and the
    working directory ``cwd/`` (so the default ``runs/`` lands there and is seen)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.inp = root / "inp"
        self.cwd = root / "cwd"
        self.inp.mkdir()
        self.cwd.mkdir()
        self.out = str(root / "out")
        self.marker = root / MARKER

    def write(self, name: str, content) -> str:
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def space(self, edit: Callable[[str], str] = lambda s: s, name: str = "space.toml") -> str:
        """A copy of the scenes space with ``edit`` applied to its TOML text."""
        return self.write(name, edit(SCENES_TOML))

    def exploit_pickle(self, name: str = "evil.pkl") -> str:
        """A file whose unpickling would create :attr:`marker`."""
        return self.write(name, pickle.dumps({"model": Exploit(str(self.marker))}))

    def a_file(self) -> str:
        """A regular file (to put an output path under)."""
        return self.write("plain.txt", "not a directory\n")

    def tree(self, groupings=None, tasks=("semseg", "depth", "normals", "edges", "scene")) -> str:
        import json

        groupings = groupings or [[list(tasks)]] * 4
        return self.write("tree.json", json.dumps({"tasks": list(tasks), "groupings": groupings}))


def snapshot(root: Path) -> Set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(argv: Sequence[str], capsys) -> Tuple[int, str, str]:
    """``branchnas.cli.main(argv)`` in this process: (exit status, stdout, stderr)."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(ws: Workspace, argv: Sequence[str], capsys, before: Set[str],
                   match: Optional[str] = None) -> str:
    """The contract: non-zero exit, exactly one ``error:`` line, no traceback, no new files,
    nothing executed. Returns the error line."""
    rc, out, err = run_cli(argv, capsys)
    text = out + err
    lines = [ln for ln in text.splitlines() if "error:" in ln]
    assert rc not in (0, None), f"exit 0 on hostile input; output:\n{text}"
    assert "Traceback" not in text, text
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{text}"
    assert not ws.marker.exists(), "code from a file was executed"
    new = sorted(snapshot(ws.root) - before)
    assert not new, f"files left behind: {new[:10]}"
    if match is not None:
        assert re.search(match, lines[0]), lines[0]
    return lines[0]
