"""One registry mechanism for everything looked up by name: backbones, poolings, heads, featurizers, optimisers,
schedulers, corpora and inference backends.

A class (or function) registers itself with a decorator, under a canonical name and optional aliases. Lookup is
case-insensitive and ignores ``_`` and ``-``; an unknown name is a :class:`~mvector.errors.ConfigError` that
names the nearest valid one. :meth:`Registry.build` checks the given keys against the constructor's signature
before calling it, so a misspelt key names the nearest valid key, and a bad value names its key.
:meth:`Registry.names` feeds the configuration docs, the command-line help, the README tables and the
parametrised tests.

>>> WIDGETS = Registry("widget", section="widget_conf")
>>> @WIDGETS.register("Round", aliases=("circle",))
... class Round:
...     def __init__(self, radius: int = 1):
...         self.radius = radius
>>> WIDGETS.build("CIRCLE", {"radius": 3}).radius, WIDGETS.names()
(3, ['Round'])
>>> WIDGETS.build("round", {"raduis": 3})
Traceback (most recent call last):
...
mvector.errors.ConfigError: unknown key 'raduis' in widget_conf (Round); did you mean 'radius'? Valid keys: radius
>>> WIDGETS.build("round", {"radius": "1x"})
Traceback (most recent call last):
...
mvector.errors.ConfigError: widget_conf.radius (Round): expected an integer, got '1x'
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from mvector.errors import ConfigError, check_keys, unknown_name_error

__all__ = ["Registry", "canonical_name", "check_value_types"]

T = TypeVar("T")

_TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _accepted_types(param: inspect.Parameter) -> tuple[type, ...] | None:
    """The plain types a parameter takes, from its annotation (``"int | None"``) or its default; None: unknown."""
    ann = param.annotation
    if isinstance(ann, str):
        parts = [p.strip() for p in ann.replace("Optional[", "").rstrip("]").split("|")]
        if ann.startswith("Optional[") or "|" in ann or ann in _TYPE_NAMES:
            types = [_TYPE_NAMES.get(p) for p in parts]
            if all(t is not None for t in types):
                return tuple(types) + ((type(None),) if ann.startswith("Optional[") else ())
        return None
    if ann in _TYPE_NAMES.values():
        return (ann,)
    if ann is inspect.Parameter.empty and type(param.default) in (int, float, bool, str):
        return (type(param.default),)
    return None


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in types
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    if isinstance(value, float):
        return float in types
    if isinstance(value, str):
        return str in types
    return True  # lists, mappings, tensors ...: the constructor checks them


def check_value_types(target: Callable[..., Any], conf: Mapping[str, Any], where: str, section: str = "") -> None:
    """Raise :class:`ConfigError` naming ``section.key`` for a value of the wrong plain type.

    The expected type comes from the parameter's annotation (``int``, ``float | None`` ...) or, without one,
    from its default's type; a parameter of another kind is not checked here.

    >>> def make(channels: int = 512, scale: float = 32.0, name: str | None = None): ...
    >>> check_value_types(make, {"channels": 64, "scale": 30, "name": None}, "model_conf (X)", "model_conf")
    >>> check_value_types(make, {"channels": "1x"}, "model_conf (X)", "model_conf")
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: model_conf.channels (X): expected an integer, got '1x'
    """
    params = inspect.signature(target).parameters
    for key, value in conf.items():
        param = params.get(key)
        if param is None:
            continue
        types = _accepted_types(param)
        if types is None or _fits(value, types):
            continue
        words = " or ".join(_TYPE_WORDS[t] for t in types)
        entry = where[where.find("(") :] if "(" in where else ""
        name = f"{section}.{key}" if section else key
        raise ConfigError(f"{name}{' ' + entry if entry else ''}: expected {words}, got {value!r}")


def canonical_name(name: str) -> str:
    """The form names are compared in: lower case, without ``_`` and ``-``.

    >>> canonical_name("Ecapa_TDNN"), canonical_name("cam-pp")
    ('ecapatdnn', 'campp')
    """
    return str(name).lower().replace("_", "").replace("-", "")


class Registry(Mapping[str, Any]):
    """Named constructors of one kind (``"backbone"``, ``"loss"`` ...), configured by one config section.

    A registry is also a read-only mapping from canonical names to the registered objects, so
    ``sorted(BACKBONES)`` and ``BACKBONES["EcapaTdnn"]`` work.

    Args:
        kind: what the entries are, for messages (``"backbone"``).
        section: the config section holding their arguments (``"model_conf"``), for messages.
        fixed: constructor parameters supplied by the library, not by the config (``("input_size",)``).
    """

    def __init__(self, kind: str, section: str | None = None, fixed: Sequence[str] = ()) -> None:
        self.kind = kind
        self.section = section or f"{kind}_conf"
        self.fixed = tuple(fixed)
        self._entries: dict[str, Any] = {}
        self._lookup: dict[str, str] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str | None = None, aliases: Sequence[str] = ()) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as ``name`` (default: its ``__name__``)."""

        def decorate(obj: T) -> T:
            self.add(name or obj.__name__, obj, aliases)
            return obj

        return decorate

    def add(self, name: str, obj: Any, aliases: Sequence[str] = ()) -> None:
        """Register ``obj`` as ``name`` (and ``aliases``); a name already taken by another object is an error."""
        for key in (name, *aliases):
            taken = self._lookup.get(canonical_name(key))
            if taken is not None and taken != name and self._entries[taken] is not obj:
                raise ConfigError(f"{self.kind} name {key!r} is already registered for {taken}")
        for key in (name, *aliases):
            self._lookup[canonical_name(key)] = name
        self._entries[name] = obj

    def remove(self, name: str) -> None:
        """Unregister entry ``name`` and its aliases (for tests and plug-ins that replace an entry)."""
        key = self.resolve(name)
        self._lookup = {alias: target for alias, target in self._lookup.items() if target != key}
        del self._entries[key]

    # ------------------------------------------------------------------ lookup
    def resolve(self, name: str) -> str:
        """The canonical registered name for ``name`` or an alias, or a ConfigError naming the nearest."""
        key = self._lookup.get(canonical_name(name)) if isinstance(name, str) else None
        if key is None:
            raise unknown_name_error(self.kind, str(name), self._entries)
        return key

    def get_entry(self, name: str) -> Any:
        """The registered object for ``name`` (any case, alias)."""
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._entries)

    def keys_of(self, name: str) -> list[str]:
        """Config keys entry ``name`` accepts: its constructor's parameters except ``self`` and the fixed ones."""
        obj = self.get_entry(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = inspect.signature(target).parameters.values()
        skip = {"self", *self.fixed}
        return [p.name for p in params if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def _takes_any_keyword(self, name: str) -> bool:
        obj = self._entries[name]
        target = obj.__init__ if inspect.isclass(obj) else obj
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())

    def build(self, name: str, conf: Mapping[str, Any] | None = None, *args: Any, **fixed: Any) -> Any:
        """Construct entry ``name`` with positional ``args``, the library's ``fixed`` keywords and ``conf``.

        Unknown keys in ``conf`` are an error naming the nearest valid one; a ``TypeError`` or ``ValueError`` from
        the constructor becomes a :class:`ConfigError` naming the section and the entry.
        """
        key = self.resolve(name)
        conf = dict(conf or {})
        where = f"{self.section} ({key})"
        if not self._takes_any_keyword(key):  # a constructor with **kwargs checks its keys itself
            check_keys(conf, self.keys_of(key), where)
        obj = self._entries[key]
        check_value_types(obj.__init__ if inspect.isclass(obj) else obj, conf, where, self.section)
        try:
            return self._entries[key](*args, **fixed, **conf)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from err

    # ------------------------------------------------------------------ mapping interface
    def __getitem__(self, name: str) -> Any:
        return self.get_entry(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name) in self._lookup

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
