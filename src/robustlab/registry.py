"""One small generic registry used by every family (datasets, models, losses, attacks,
objectives, corruptions).

>>> from robustlab.registry import Registry
>>> losses = Registry("loss")
>>> @losses.register("gce")
... def make_gce(q: float = 0.7): ...
>>> losses.available()
['gce']

Names are matched case-insensitively and ``_`` and ``-`` are interchangeable, so
``label_smoothing`` and ``label-smoothing`` find the same entry. An unknown name raises
:class:`~robustlab.errors.UnknownNameError` listing the closest registered names, and
unknown keyword parameters raise :class:`~robustlab.errors.ConfigError` listing the
closest accepted parameter names, before anything is built.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from robustlab.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (best first)."""
    cands = list(candidates)
    by_key = {_key(c): c for c in cands}
    hits = difflib.get_close_matches(_key(name), list(by_key), n=n, cutoff=0.5)
    # substring matches help with prefixes such as "wide" -> "wide_resnet"
    for k in by_key:
        if len(hits) >= n:
            break
        if _key(name) and _key(name) in k and k not in hits:
            hits.append(k)
    return [by_key[h] for h in hits]


def check_params(
    fn: Callable[..., Any], params: dict[str, Any], *, what: str, allow_extra: Iterable[str] = ()
) -> None:
    """Raise :class:`ConfigError` if ``params`` has names that ``fn`` does not accept.

    Callables with ``**kwargs`` accept everything and are not checked.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ] + list(allow_extra)
    for name in params:
        if name not in accepted:
            near = close_matches(name, accepted, n=3)
            hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
            raise ConfigError(
                f"{what} does not take a parameter {name!r}.{hint} "
                f"Accepted parameters: {', '.join(accepted) or '(none)'}."
            )


class Registry(Generic[T]):
    """A name -> factory mapping for one family of objects.

    Parameters
    ----------
    family:
        What the registry holds, in the singular ("loss", "model", ...). Used in messages.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T]] = {}
        self._names: dict[str, str] = {}  # key -> display name
        self._aliases: dict[str, str] = {}  # alias key -> canonical key

    # -- registration -------------------------------------------------------------
    def register(
        self, name: str, *, aliases: Iterable[str] = ()
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory function under ``name``."""

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            self.add(name, obj, aliases=aliases)
            return obj

        return deco

    def add(self, name: str, obj: Callable[..., T], *, aliases: Iterable[str] = ()) -> None:
        """Register ``obj`` under ``name`` (and optional aliases)."""
        key = _key(name)
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.family} {name!r} is registered twice")
        self._entries[key] = obj
        self._names[key] = name
        for alias in aliases:
            self._aliases[_key(alias)] = key
        try:
            obj.registry_name = name  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass

    # -- lookup ---------------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        if not isinstance(name, str):
            raise UnknownNameError(
                f"{self.family} names are strings, got {type(name).__name__} {name!r}."
            )
        key = _key(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            names = self.available()
            near = close_matches(name, names + [self._names[v] for v in self._aliases.values()])
            near = list(dict.fromkeys(near))
            hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
            raise UnknownNameError(
                f"Unknown {self.family} {name!r}.{hint} Available: {', '.join(names)}."
            )
        return key

    def get(self, name: str) -> Callable[..., T]:
        """Return the registered factory for ``name`` without calling it."""
        return self._entries[self._resolve(name)]

    def canonical(self, name: str) -> str:
        """Return the registered display name that ``name`` refers to."""
        return self._names[self._resolve(name)]

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build the object registered under ``name`` with ``kwargs``.

        Unknown parameter names raise :class:`ConfigError` listing close matches.
        """
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
        check_params(target, kwargs, what=f"{self.family} {self.canonical(name)!r}")
        return factory(**kwargs)

    def available(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern`` (e.g. ``"*resnet*"``)."""
        pat = _key(pattern)
        return sorted(
            self._names[k] for k in self._entries if fnmatch.fnmatchcase(k, pat)
        )

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return key in self._entries or key in self._aliases

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.available())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.available()})"


__all__ = ["Registry", "close_matches", "check_params"]
