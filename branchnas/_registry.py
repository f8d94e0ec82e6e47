"""A small named registry, the one mechanism behind every extension point.

Backbones, heads, task types, datasets, baselines, affinity measures, loss weightings and
search strategies each keep one :class:`Registry` and expose ``register_*`` / ``list_*`` /
``get_*`` / ``create_*`` functions over it (as timm's ``_registry.py`` does).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar

from .errors import BranchnasError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps unique names to objects (usually classes or factory functions).

    Args:
        kind: what is registered, used in error messages ("backbone", "task type", ...).

    Example:
        >>> reg = Registry("colour")
        >>> @reg.register("red")
        ... def make_red(): return (255, 0, 0)
        >>> reg.create("red")
        (255, 0, 0)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str, obj: Optional[T] = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            BranchnasError: if ``name`` is already registered.
        """

        def add(o: T) -> T:
            if name in self._items:
                raise BranchnasError(
                    f"{self.kind} {name!r} is already registered; choose another name"
                )
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

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
        return factory(**kwargs)

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
