"""The ``branchnas`` command: parses arguments, calls the library, prints and writes.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Library modules are imported inside the command functions so that ``branchnas --help``
does not pay for importing torch. Bad input surfaces as a :class:`BranchnasError`, printed
as one ``error:`` line with exit status 2; an interrupt exits 130 and the same command
resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .errors import BranchnasError

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

DEFAULT_SPACE = "scenes"


def _print(text: str = "") -> None:
    print(text, flush=True)


def _write_json(obj: object) -> None:
    _print(json.dumps(obj, indent=2, sort_keys=False))


# --------------------------------------------------------------------------- commands


def _cmd_describe(args: argparse.Namespace) -> int:
    from .spaces import describe_space, format_description, load_space
    from .tree import Tree

    space = load_space(args.space)
    tree = Tree.load(args.tree, tasks=space.task_names, depth=len(space.backbone.blocks)) if args.tree else None
    desc = describe_space(space, tree=tree)
    if args.format == "json":
        _write_json(desc)
    else:
        _print(format_description(desc))
    return 0


# --------------------------------------------------------------------------- parser

_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def _add(sub: "argparse._SubParsersAction", name: str, func: Callable[[argparse.Namespace], int],
         help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(_command=name)
    _COMMANDS[name] = func
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="branchnas",
        description="Design branched multi-task networks: which layers should tasks share?",
    )
    parser.add_argument("--version", action="version", version=f"branchnas {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = _add(sub, "describe", _cmd_describe,
             "print a search space's blocks (channels, stride, params, FLOPs) and tree totals")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search-space name or TOML path (default: %(default)s)")
    p.add_argument("--tree", help="a tree JSON file to total")
    p.add_argument("--format", choices=["table", "json"], default="table")

    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args._command](args)
    except BranchnasError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr, flush=True)
        return 130
