"""Command-line choices read from a registry when first needed.

An option whose values are a registry's names (weightings, baselines, affinity measures,
search strategies) takes ``choices=LazyChoices(list_weightings)``: argparse checks values
against it and lists it in ``--help`` and in its "invalid choice" error, but the registry
(and torch, which most registries import) is loaded only then, so ``branchnas --help`` and
commands that never look at the option stay fast.

Example:
    >>> choices = LazyChoices(lambda: ["equal", "dwa"])
    >>> "dwa" in choices, list(choices)
    (True, ['equal', 'dwa'])
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Sequence

__all__ = ["LazyChoices"]


class LazyChoices(Sequence[str]):
    """A sequence of names computed by ``names()`` on first use, then kept.

    Args:
        names: returns the allowed values, e.g. a registry's ``list_*`` function.
        extra: values allowed besides the registry's, listed first (e.g. ``"auto"``).
    """

    def __init__(self, names: Callable[[], Iterable[str]], extra: Sequence[str] = ()) -> None:
        self._names = names
        self._extra = tuple(extra)
        self._values: Optional[List[str]] = None

    def _load(self) -> List[str]:
        if self._values is None:
            values = list(self._extra)
            values += [n for n in self._names() if n not in values]
            self._values = values
        return self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index):  # type: ignore[override]
        return self._load()[index]

    def __contains__(self, value: object) -> bool:
        return value in self._load()

    def __repr__(self) -> str:
        return f"LazyChoices({self._load()!r})"
