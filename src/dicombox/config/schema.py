"""Turn parsed TOML into frozen dataclasses, naming the key of every problem.

Each configuration section is a frozen dataclass whose field types drive the
conversion: ``int``, ``float``, ``bool``, ``str``, ``Path``, ``Literal[...]``,
``tuple[X, ...]`` (from a TOML array), ``X | None`` and nested dataclasses
(from a TOML table, or an array of tables for ``tuple[Dataclass, ...]``).
A field's ``metadata`` may carry ``min``/``max`` bounds, a ``check`` callable
returning an error string (or ``None``) and a ``doc`` line for the reference.
A dataclass may define ``validate(self, key)`` for checks that span fields;
it raises :class:`ConfigError` itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration file is invalid; the message names the key."""

    def __init__(self, key: str, problem: str, source: str | None = None):
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


def setting(default: Any = dataclasses.MISSING, *, doc: str = "", min: float | None = None,
            max: float | None = None, check=None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with validation metadata."""
    meta = {"doc": doc, "min": min, "max": max, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (optional)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "an array"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def convert(tp: Any, value: Any, key: str, base_dir: Path | None = None) -> Any:
    """Convert ``value`` to type ``tp`` or raise :class:`ConfigError` for ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return convert(args[0], value, key, base_dir)
        errors = []
        for arg in args:
            try:
                return convert(arg, value, key, base_dir)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(key, "; ".join(errors))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be {_type_name(tp)}, not {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, not {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"must be a path (non-empty string), not {value!r}")
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path
    if origin is tuple:
        args = typing.get_args(tp)
        item_tp = args[0]
        if not isinstance(value, list):
            raise ConfigError(key, f"must be an array, not {value!r}")
        return tuple(convert(item_tp, v, f"{key}[{i}]", base_dir) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, not {value!r}")
        return build(tp, value, key, base_dir)
    raise TypeError(f"unsupported configuration type {tp!r} at {key}")


def build(cls: type, data: dict, prefix: str = "", base_dir: Path | None = None):
    """Build dataclass ``cls`` from the table ``data``; ``prefix`` is its key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(_join(prefix, name), f"unknown key (known keys: {known})")
    values = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "is required")
            continue
        value = convert(hints[name], data[name], key, base_dir)
        meta = f.metadata or {}
        lo, hi = meta.get("min"), meta.get("max")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                raise ConfigError(key, f"must be at least {lo}, not {value}")
            if hi is not None and value > hi:
                raise ConfigError(key, f"must be at most {hi}, not {value}")
        check = meta.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(key, problem)
        values[name] = value
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def reference(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows describing ``cls`` for documentation."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = _join(prefix, f.name)
        tp = hints[f.name]
        inner = tp
        origin = typing.get_origin(tp)
        if origin is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            rows.extend(reference(typing.get_args(tp)[0], f"[[{key}]]"))
            continue
        if dataclasses.is_dataclass(inner):
            rows.extend(reference(inner, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default, (f.metadata or {}).get("doc", "")))
    return rows
