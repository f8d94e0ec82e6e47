"""A small named registry, the one mechanism behind every extension point.

Backbones, heads, task types, datasets, baselines, affinity measures, loss weightings and
search strategies each keep one :class:`Registry` and expose ``register_*`` / ``list_*`` /
``get_*`` / ``create_*`` functions over it (as timm's ``_registry.py`` does).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, TypeVar

from .errors import BranchnasError

T = TypeVar("T")

__all__ = ["Registry", "check_kwargs"]


def check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str,
                 reserved: tuple = ()) -> None:
    """Raise a one-line error when ``kwargs`` has a key that ``factory`` does not accept.

    The one place that validates constructor keyword arguments for every registry.

    Args:
        factory: the class or function the keyword arguments will be passed to.
        kwargs: the keyword arguments a user supplied (a space file, the command line).
        what: names the thing in the error (``"baseline 'mtan'"``, ``"head 'fcn'"``).
        reserved: parameters the caller supplies itself, not the user.

    Raises:
        BranchnasError: naming the unknown keys and listing the accepted ones.

    Example:
        >>> def make(width=1, depth=2): ...
        >>> check_kwargs(make, {"width": 3}, "thing 'x'")
        >>> check_kwargs(make, {"wdith": 3}, "thing 'x'")
        Traceback (most recent call last):
        ...
        branchnas.errors.BranchnasError: thing 'x' does not take 'wdith'; it takes: depth, width
    """
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(n for n, p in params.items()
                      if n not in reserved and n != "self"
                      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise BranchnasError(
            f"{what} does not take {', '.join(repr(k) for k in unknown)}; "
            f"it takes: {', '.join(accepted) or 'no options'}")


class Registry(Generic[T]):
    """Maps unique names to objects (usually classes or factory functions).

    Args:
        kind: what is registered, used in error messages ("backbone", "task type", ...).

    An entry carries metadata (``register(name, obj, **meta)``): what a baseline needs, what
    a strategy supports, how a model is drawn, so callers read :meth:`meta` instead of
    switching on names.

    Example:
        >>> reg = Registry("colour")
        >>> @reg.register("red", warm=True)
        ... def make_red(): return (255, 0, 0)
        >>> reg.create("red")
        (255, 0, 0)
        >>> reg.meta("red")["warm"]
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, obj: Optional[T] = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name`` with metadata ``meta``; without ``obj``, a decorator.

        Raises:
            BranchnasError: if ``name`` is already registered.
        """

        def add(o: T) -> T:
            if name in self._items:
                raise BranchnasError(
                    f"{self.kind} {name!r} is already registered; choose another name"
                )
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        return add if obj is None else add(obj)

    def meta(self, name: str) -> Dict[str, Any]:
        """The metadata registered with ``name`` (a copy; empty when none was given).

        Raises:
            BranchnasError: for an unknown name, listing the known ones.
        """
        self.get(name)
        return dict(self._meta[name])

    def check_choice(self, name: str) -> str:
        """``name`` if it is registered, else the unknown-name error; for validating options early."""
        self.get(name)
        return name

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            BranchnasError: for an unknown name, listing the known ones.
        """
        try:
            return self._items[name]
        except KeyError:
            raise BranchnasError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the object registered as ``name`` with ``kwargs``."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
