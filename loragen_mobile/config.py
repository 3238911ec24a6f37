"""One config layer: typed dataclasses read from YAML (or dicts) with one loader and one error style.

Training configs (``configs/*.yaml``: ``generator:`` and ``edge:`` sections), export recipes
(``export/*/*.yaml``) and service settings are dataclasses; :func:`load_section` reads a YAML
file, :func:`from_mapping` turns a mapping into a dataclass with its field types checked. Every
problem is one line with code ``config`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import LoragenError

T = TypeVar("T")


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"config file {p} does not exist", code="not-found")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LoragenError(f"{p} is not valid YAML: {str(e).splitlines()[0]}", code="config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LoragenError(f"cannot read {p}: {e}", code="io") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise LoragenError(f"{p} must hold a mapping, not a {type(doc).__name__}", code="config")
    return doc


def load_section(path: str | os.PathLike | None, section: str | None, *, whole_if_missing: bool = False) -> dict:
    """The ``section`` mapping of a YAML file (``{}`` without a file). ``whole_if_missing``: a file
    without that section is the section itself (configs written before sections existed)."""
    if path is None:
        return {}
    doc = load_yaml(path)
    if section is None:
        return doc
    if section not in doc:
        return doc if whole_if_missing else {}
    if not isinstance(doc[section], dict):
        raise LoragenError(f"{path}: '{section}' must be a mapping", code="config")
    return dict(doc[section])


def from_mapping(cls: type[T], d: dict, what: str, overrides: dict | None = None) -> T:
    """``cls(**d)`` with unknown keys refused and every value checked against its field's type.

    ``overrides`` (e.g. command-line options) replace values of ``d``; ``None`` means "not given".
    ``what`` names the source in messages (``"configs/tiny.yaml: generator"``).
    """
    d = {**d, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise LoragenError(f"{what}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}",
                           code="config")
    hints = typing.get_type_hints(cls)
    missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise LoragenError(f"{what}: missing key(s) {', '.join(missing)}", code="config")
    out = {}
    for k, v in d.items():
        ok, value = _coerce(v, hints[k])
        if not ok:
            raise LoragenError(f"{what}: {k} must be {_type_name(hints[k])}, got {v!r}", code="config")
        out[k] = value
    return cls(**out)


def _coerce(v: Any, tp) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, v
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, x = _coerce(v, a)
            if ok:
                return True, x
        return False, v
    if tp is type(None):
        return v is None, v
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool), float(v) if isinstance(v, (int, float)) else v
    if tp is str:
        return isinstance(v, str), v
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False, v
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                return False, v
            items = [_coerce(x, a) for x, a in zip(v, args)]
        else:
            items = [_coerce(x, args[0] if args else Any) for x in v]
        if not all(ok for ok, _ in items):
            return False, v
        return True, origin(x for _, x in items)
    if origin is dict:
        return isinstance(v, dict), v
    return isinstance(v, tp), v


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))
