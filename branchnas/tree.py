"""The task tree: which tasks share which block at every depth of the backbone.

A tree over ``N`` tasks and ``D`` sharable blocks is one partition of the tasks per depth
``d = 1..D``; each depth's partition refines the one before it (groups only ever split
as we go deeper). Group ``g`` at depth ``d`` owns one copy of block ``d`` and feeds the
tasks it contains. The JSON form is design.md's contract::

    {"tasks": ["seg", "depth", "normals"],
     "groupings": [[["seg", "depth", "normals"]],
                   [["seg"], ["depth", "normals"]]]}

Canonical order (applied on construction, so equal trees serialize identically): groups
sorted by the index of their first task, tasks inside a group by index.

Example:
    >>> t = Tree(("a", "b", "c"), [[["a", "b", "c"]], [["c", "b"], ["a"]]])
    >>> t.groupings[1]
    (('a',), ('b', 'c'))
    >>> t.parent(1, 1)
    0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import BranchnasError

__all__ = ["Tree", "TreeError"]

Group = Tuple[str, ...]
Grouping = Tuple[Group, ...]
IndexGroup = Tuple[int, ...]
IndexGrouping = Tuple[IndexGroup, ...]


class TreeError(BranchnasError):
    """A tree that is not a chain of refining partitions (the message names depth and tasks)."""


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(names) + "]"


class Tree:
    """An immutable task tree (one refining partition of the tasks per depth).

    Args:
        tasks: the task names, in the order that fixes task indices (and the affinity's
            rows). Names must be unique non-empty strings.
        groupings: one partition per depth d = 1..D; each partition is a sequence of
            groups, each a sequence of task names. Any order is accepted; the canonical
            order is applied.

    Raises:
        TreeError: when a depth is not a partition of the tasks (a task missing,
            duplicated or unknown, an empty group), or does not refine the previous depth,
            or when there are no depths or no tasks.
    """

    __slots__ = ("_groupings", "_hash", "_index_groupings", "_parents", "_tasks")

    def __init__(self, tasks: Sequence[str], groupings: Sequence[Sequence[Sequence[str]]]) -> None:
        tasks_t = tuple(tasks)
        _check_tasks(tasks_t)
        index = {t: i for i, t in enumerate(tasks_t)}
        if isinstance(groupings, (str, bytes)) or len(groupings) == 0:
            raise TreeError("a tree needs at least one depth; give one grouping per cut point")
        index_groupings: List[IndexGrouping] = []
        for d, grouping in enumerate(groupings, start=1):
            index_groupings.append(_canonical_depth(d, grouping, tasks_t, index))
        parents = _check_refinement(index_groupings, tasks_t)
        self._tasks: Tuple[str, ...] = tasks_t
        self._index_groupings: Tuple[IndexGrouping, ...] = tuple(index_groupings)
        self._groupings: Tuple[Grouping, ...] = tuple(
            tuple(tuple(tasks_t[i] for i in g) for g in part) for part in index_groupings
        )
        self._parents: Tuple[Tuple[int, ...], ...] = parents
        self._hash = hash((self._tasks, self._index_groupings))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_index_partitions(
        cls, tasks: Sequence[str], parts: Sequence[Sequence[Sequence[int]]]
    ) -> "Tree":
        """Build a tree from task indices: ``parts[d]`` is a list of lists of indices.

        Raises:
            TreeError: for an index outside ``0..N-1`` or any error of :class:`Tree`.
        """
        tasks_t = tuple(tasks)
        n = len(tasks_t)
        named = []
        for d, part in enumerate(parts, start=1):
            groups = []
            for g in part:
                names = []
                for i in g:
                    i = int(i)
                    if not 0 <= i < n:
                        raise TreeError(
                            f"depth {d}: task index {i} is out of range for {n} tasks; "
                            f"use indices 0..{n - 1}"
                        )
                    names.append(tasks_t[i])
                groups.append(names)
            named.append(groups)
        return cls(tasks_t, named)

    @classmethod
    def single_task(cls, tasks: Sequence[str], depth: int) -> "Tree":
        """The all-separate tree: every task has its own copy of every block."""
        _check_depth_arg(depth)
        return cls(tasks, [[[t] for t in tasks] for _ in range(depth)])

    @classmethod
    def fully_shared(cls, tasks: Sequence[str], depth: int) -> "Tree":
        """The fully shared tree: one backbone for all tasks, branching only into heads."""
        _check_depth_arg(depth)
        return cls(tasks, [[list(tasks)] for _ in range(depth)])

    @classmethod
    def from_json(
        cls,
        obj: Union[str, Mapping[str, Any]],
        depth: Optional[int] = None,
        tasks: Optional[Sequence[str]] = None,
    ) -> "Tree":
        """Parse the JSON form (a dict or a JSON string).

        Args:
            obj: ``{"tasks": [...], "groupings": [...]}`` or its JSON text.
            depth: if given, the number of depths the tree must have (the search space's
                number of cut points).
            tasks: if given, the tasks the tree must cover (as a set); the returned tree
                uses this order, so task indices line up with the caller's arrays.

        Raises:
            TreeError: for malformed JSON, a wrong structure, the wrong number of depths,
                a task set that differs from ``tasks``, or any error of :class:`Tree`.
        """
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise TreeError(f"tree is not valid JSON ({e.msg} at line {e.lineno}); "
                                "fix the file") from None
            except RecursionError:  # e.g. 200k nested brackets
                raise TreeError("tree JSON is nested too deeply to be a tree; fix the file") from None
            except UnicodeDecodeError:
                raise TreeError("tree is not UTF-8 JSON text; give a tree JSON file") from None
        if not isinstance(obj, Mapping) or "tasks" not in obj or "groupings" not in obj:
            raise TreeError('a tree must be a JSON object with "tasks" and "groupings"; '
                            "see design.md (Contracts)")
        file_tasks = obj["tasks"]
        groupings = obj["groupings"]
        if not isinstance(file_tasks, list) or not all(isinstance(t, str) for t in file_tasks):
            raise TreeError('"tasks" must be a list of task names')
        if not isinstance(groupings, list) or not all(
            isinstance(p, list) and all(
                isinstance(g, list) and all(isinstance(t, str) for t in g) for g in p
            )
            for p in groupings
        ):
            raise TreeError('"groupings" must be a list (one per depth) of lists of groups, '
                            "each a list of task names")
        if depth is not None and len(groupings) != depth:
            raise TreeError(
                f"tree has {len(groupings)} depths but {depth} were expected "
                f"(one grouping per cut point); give exactly {depth} groupings"
            )
        if tasks is not None:
            want = tuple(tasks)
            missing = [t for t in want if t not in file_tasks]
            extra = [t for t in file_tasks if t not in want]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing tasks {_names(missing)}")
                if extra:
                    parts.append(f"unexpected tasks {_names(extra)}")
                raise TreeError(
                    f"tree tasks do not match the expected tasks {_names(want)}: "
                    f"{'; '.join(parts)}; list exactly the expected tasks"
                )
            cls(file_tasks, groupings)  # validate against the file's own task list first
            return cls(want, groupings)
        return cls(file_tasks, groupings)

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        depth: Optional[int] = None,
        tasks: Optional[Sequence[str]] = None,
    ) -> "Tree":
        """Read a tree from a JSON file (see :meth:`from_json` for ``depth``/``tasks``).

        Raises:
            TreeError: if the file cannot be read or holds an invalid tree.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TreeError(f"cannot read tree file {str(p)!r} ({e.strerror}); "
                            "check the path") from None
        except UnicodeDecodeError:
            raise TreeError(f"tree file {str(p)!r} is not UTF-8 text (a binary file?); "
                            "give a tree JSON file") from None
        try:
            return cls.from_json(text, depth=depth, tasks=tasks)
        except TreeError as e:
            raise TreeError(f"{p}: {e}") from None

    # ------------------------------------------------------------------ serialization
    def to_json(self) -> Dict[str, Any]:
        """The design.md JSON object (plain lists, canonical order)."""
        return {
            "tasks": list(self._tasks),
            "groupings": [[list(g) for g in part] for part in self._groupings],
        }

    def dumps(self) -> str:
        """The JSON text of :meth:`to_json` (one line per depth)."""
        lines = [json.dumps([list(g) for g in part]) for part in self._groupings]
        return (
            '{"tasks": ' + json.dumps(list(self._tasks)) + ',\n "groupings": [\n  '
            + ",\n  ".join(lines) + "\n ]}\n"
        )

    def save(self, path: Union[str, Path]) -> None:
        """Write :meth:`dumps` to ``path``."""
        Path(path).write_text(self.dumps(), encoding="utf-8")

    # ------------------------------------------------------------------ accessors
    @property
    def tasks(self) -> Tuple[str, ...]:
        """Task names in index order."""
        return self._tasks

    @property
    def groupings(self) -> Tuple[Grouping, ...]:
        """Per depth, the groups of task names (canonical order)."""
        return self._groupings

    @property
    def index_groupings(self) -> Tuple[IndexGrouping, ...]:
        """Per depth, the groups of task indices (canonical order)."""
        return self._index_groupings

    @property
    def depth(self) -> int:
        """The number of depths D (sharable blocks)."""
        return len(self._groupings)

    @property
    def num_tasks(self) -> int:
        """The number of tasks N."""
        return len(self._tasks)

    @property
    def group_counts(self) -> Tuple[int, ...]:
        """``|P_d|`` for every depth (non-decreasing)."""
        return tuple(len(p) for p in self._groupings)

    def num_groups(self, d: int) -> int:
        """``|P_d|`` at 0-based depth ``d``."""
        return len(self._groupings[d])

    def parent(self, d: int, g: int) -> int:
        """Index of the group at depth ``d-1`` that contains group ``g`` of depth ``d``.

        Args:
            d: 0-based depth, at least 1.
            g: group index at depth ``d``.

        Raises:
            IndexError: for ``d`` < 1 or out-of-range indices.
        """
        if d < 1:
            raise IndexError(f"depth {d} has no parent depth; use d >= 1")
        return self._parents[d][g]

    def group_of(self, d: int, task: Union[str, int]) -> int:
        """Index of the group at 0-based depth ``d`` holding ``task`` (name or index)."""
        i = task if isinstance(task, int) else self._tasks.index(task)
        for g, grp in enumerate(self._index_groupings[d]):
            if i in grp:
                return g
        raise IndexError(f"task {task!r} not found")  # unreachable for a valid tree

    # ------------------------------------------------------------------ drawing
    def ascii(self) -> str:
        """A drawing of the tree: the input, then one node per (depth, group), heads last.

        Example:
            >>> print(Tree(("a", "b"), [[["a", "b"]], [["a"], ["b"]]]).ascii())
            input
            └── block 1: a, b
                ├── block 2: a
                │   └── head a
                └── block 2: b
                    └── head b
        """
        lines = ["input"]
        depth = self.depth

        def children(d: int, g: int) -> List[int]:
            return [c for c, p in enumerate(self._parents[d + 1]) if p == g]

        def walk(d: int, g: int, prefix: str, last: bool) -> None:
            names = ", ".join(self._groupings[d][g])
            lines.append(f"{prefix}{'└── ' if last else '├── '}block {d + 1}: {names}")
            inner = prefix + ("    " if last else "│   ")
            if d + 1 < depth:
                kids = children(d, g)
                for k, c in enumerate(kids):
                    walk(d + 1, c, inner, k == len(kids) - 1)
            else:
                heads = self._groupings[d][g]
                for k, t in enumerate(heads):
                    lines.append(f"{inner}{'└── ' if k == len(heads) - 1 else '├── '}head {t}")

        roots = self._index_groupings[0]
        for g in range(len(roots)):
            walk(0, g, "", g == len(roots) - 1)
        return "\n".join(lines)

    # ------------------------------------------------------------------ value semantics
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self._tasks == other._tasks and self._index_groupings == other._index_groupings

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        parts = " | ".join(
            " ".join("{" + ",".join(g) + "}" for g in part) for part in self._groupings
        )
        return f"Tree({parts})"


# ---------------------------------------------------------------------- validation
def _check_depth_arg(depth: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise TreeError(f"depth must be a positive integer, got {depth!r}")


def _check_tasks(tasks: Tuple[str, ...]) -> None:
    if not tasks:
        raise TreeError("a tree needs at least one task")
    for t in tasks:
        if not isinstance(t, str) or not t:
            raise TreeError(f"task names must be non-empty strings, got {t!r}")
    seen = set()
    dup = [t for t in tasks if t in seen or seen.add(t)]  # type: ignore[func-returns-value]
    if dup:
        raise TreeError(f"task {dup[0]!r} is listed twice in the tree's tasks; list each once")


def _canonical_depth(
    d: int, grouping: Sequence[Sequence[str]], tasks: Tuple[str, ...], index: Dict[str, int]
) -> IndexGrouping:
    if isinstance(grouping, (str, bytes)):
        raise TreeError(f"depth {d}: expected a list of groups, got a string {grouping!r}")
    seen: Dict[int, int] = {}
    groups: List[IndexGroup] = []
    for gi, group in enumerate(grouping):
        if isinstance(group, (str, bytes)):
            raise TreeError(f"depth {d}: group {group!r} must be a list of task names, "
                            f"e.g. [{group!r}]")
        if len(group) == 0:
            raise TreeError(f"depth {d}: group {gi + 1} is empty; remove it")
        idx = []
        for t in group:
            if t not in index:
                raise TreeError(
                    f"depth {d}: unknown task {t!r} (tasks are {_names(tasks)}); "
                    "use only the tree's tasks"
                )
            i = index[t]
            if i in seen:
                raise TreeError(
                    f"depth {d}: task {t!r} appears more than once; "
                    "put each task in exactly one group per depth"
                )
            seen[i] = gi
            idx.append(i)
        groups.append(tuple(sorted(idx)))
    missing = [tasks[i] for i in range(len(tasks)) if i not in seen]
    if missing:
        raise TreeError(
            f"depth {d}: tasks {_names(missing)} are missing; "
            "put each task in exactly one group per depth"
        )
    groups.sort(key=lambda g: g[0])
    return tuple(groups)


def _check_refinement(
    parts: List[IndexGrouping], tasks: Tuple[str, ...]
) -> Tuple[Tuple[int, ...], ...]:
    parents: List[Tuple[int, ...]] = [tuple(-1 for _ in parts[0])]
    for d in range(1, len(parts)):
        owner = {i: g for g, grp in enumerate(parts[d - 1]) for i in grp}
        par = []
        for grp in parts[d]:
            owners = sorted({owner[i] for i in grp})
            if len(owners) > 1:
                spans = " and ".join(_names(tasks[i] for i in parts[d - 1][o]) for o in owners)
                raise TreeError(
                    f"depth {d + 1}: group {_names(tasks[i] for i in grp)} merges tasks that "
                    f"depth {d} separates ({spans}); each depth must refine the previous one "
                    "(groups may only split going deeper)"
                )
            par.append(owners[0])
        parents.append(tuple(par))
    return tuple(parents)
