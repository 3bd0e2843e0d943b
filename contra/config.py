"""Typed configuration: YAML → dataclasses, strict keys, ``key.sub=value`` overrides.

Every stage (demo, evaluation, pretraining, fine-tuning) declares its config as nested dataclasses
and loads it through :func:`load_config`, so all of them share one behaviour: an unknown key, a
wrong type or a missing required field stops the run at start-up with a one-line error naming the
file (or the override) and the dotted key, and the resolved config is written beside the outputs.

A file may start from another: a top-level ``extends: base.yaml`` (relative to the file naming it)
deep-merges the file over its base (mappings key by key; lists and scalars replace), bases may
extend further bases, and errors name the file a key came from. Overrides apply last; the
resolved config has no ``extends``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_MISSING = object()


class ConfigError(ValueError):
    """A config problem; the message is one line naming the source and the dotted key."""

    def __init__(self, message: str) -> None:
        super().__init__(message.translate(_LINE_BREAKS))  # keys and values come from users


# what str.splitlines() splits on, written as escapes so that a message stays one line
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
# YAML parsing fails outside YAMLError too: a bad date (ValueError), an integer over Python's
# 4300 digits (ValueError), nesting deeper than the recursion limit (RecursionError)
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)
_INT64 = 2**63


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` → ``{"a.b": 3, "c": [1, 2]}``; values are parsed as YAML."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"command line: override '{item}' is not of the form key.sub=value")
        try:
            parsed[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except _YAML_FAILURES:
            parsed[key.strip()] = text
    return parsed


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    except ValueError as exc:  # a scalar in YAML's int or date syntax that is not one
        raise ConfigError(f"{path}: malformed YAML: {str(exc).split(';')[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> T:
    """Build ``cls`` from a YAML file (optional, with its ``extends`` chain) plus dotted
    overrides, validating every key."""
    source = str(path) if path is not None else "defaults"
    files: dict[str, str] = {}
    tree = _read_extended(Path(path), (), files) if path is not None else {}
    parsed = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    items = parsed.items()
    origin: dict[str, str] = {}
    for dotted, value in items:
        _set_dotted(tree, dotted, value, "command line")
        origin[dotted] = f"command line override '{dotted}'"
    return _build(cls, tree, "", _Sources(source, origin, files))


EXTENDS = "extends"
_MAX_CHAIN = 32  # files in one extends chain (a guard; cycles are refused by name)


def read_tree(path: str | Path) -> dict[str, Any]:
    """A config file's raw tree with its ``extends`` chain merged in: what :func:`load_config`
    builds the dataclass from (before overrides); errors as load_config's."""
    return _read_extended(Path(path), (), {})


def _read_extended(path: Path, chain: tuple[tuple[Path, Path], ...],
                   files: dict[str, str]) -> dict[str, Any]:
    """``path``'s tree merged over the tree of the file its ``extends`` names (recursively);
    ``chain``: the (file, its identity) pairs extending this one; ``files`` gets, for each
    dotted key, the file that set it last (for error messages)."""
    tree = _read_yaml(path)
    chain = (*chain, (path, _identity(path)))
    if EXTENDS in tree:
        base = _base_path(path, tree.pop(EXTENDS))
        if _identity(base) in (identity for _, identity in chain):
            loop = " -> ".join(str(p) for p in (*(p for p, _ in chain), base))
            raise ConfigError(f"{path}: '{EXTENDS}': cycle of extended files ({loop})")
        if len(chain) >= _MAX_CHAIN:
            raise ConfigError(f"{path}: '{EXTENDS}': more than {_MAX_CHAIN} files in the chain")
        under = _read_extended(base, chain, files)
        try:
            merged = _merge(under, tree)
        except RecursionError:
            raise ConfigError(f"{path}: '{EXTENDS}': sections nested too deeply to merge") from None
    else:
        merged = tree
    _record(tree, str(path), files)  # after the base's: this file's keys win
    return merged


def _base_path(path: Path, value: Any) -> Path:
    """The file an ``extends`` value names, relative to the file ``path`` naming it; checked."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: '{EXTENDS}': expected a base config's path (a non-empty "
                          f"str), got {type(value).__name__} ({value!r})")
    base = path.parent / value
    try:  # is_file is False for a NUL in the name, but raises for one too long
        why = None if base.is_file() else "not a file" if base.exists() else "no such file"
    except OSError as exc:
        why = exc.strerror or "unreadable path"
    if why:
        raise ConfigError(f"{path}: '{EXTENDS}': cannot read base config {base} ({why})")
    return base


def _identity(path: Path) -> Path:
    """One name per file, whatever the path spelling (symlinks followed), to find cycles."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop; then the spelling decides
        return Path(os.path.abspath(path))


def _merge(base: dict[Any, Any], over: dict[Any, Any]) -> dict[Any, Any]:
    """``over`` deep-merged onto ``base``: mappings key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _record(tree: dict[Any, Any], source: str, files: dict[str, str]) -> None:
    """``files[dotted] = source`` for every key of ``tree``, sections and leaves."""
    stack: list[tuple[str, dict[Any, Any]]] = [("", tree)]
    while stack:  # iterative: a file's nesting may be as deep as YAML's parser allows
        prefix, node = stack.pop()
        for key, value in node.items():
            dotted = prefix + str(key)
            files[dotted] = source
            if isinstance(value, dict):
                stack.append((dotted + ".", value))


@dataclasses.dataclass
class _Sources:
    """Which file or override a dotted key came from, for error messages."""

    default: str
    overrides: dict[str, str]
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> file (extends)

    def name(self, dotted: str) -> str:
        for key, label in self.overrides.items():
            if (dotted == key or dotted.startswith((key + ".", key + "["))
                    or key.startswith(dotted + ".")):
                return label
        key = dotted
        while key:  # the key, else its nearest section, as the files set them
            if key in self.files:
                return self.files[key]
            key = key[:max(key.rfind("."), key.rfind("["), 0)]
        return self.default


def _build(cls: type[T], data: Any, prefix: str, sources: _Sources) -> T:
    where = prefix.rstrip(".") or "<top>"
    if not isinstance(data, dict):
        raise ConfigError(f"{sources.name(where)}: {where}: expected a mapping, got "
                          f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            dotted = prefix + str(key)
            raise ConfigError(f"{sources.name(dotted)}: unknown key '{dotted}' (known: "
                              f"{', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        dotted = prefix + name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], dotted, sources)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _build(hints[name], {}, dotted + ".", sources)
            else:
                raise ConfigError(f"{sources.default}: missing required key '{dotted}'")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own validation (__post_init__)
        raise ConfigError(f"{sources.name(where)}: {e}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, dotted: str, sources: _Sources) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    fail = ConfigError(f"{sources.name(dotted)}: '{dotted}': expected {_type_name(tp)}, got "
                       f"{type(value).__name__} ({value!r})")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted + ".", sources)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(arg, value, dotted, sources)
            except ConfigError:
                continue
        raise fail
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{sources.name(dotted)}: '{dotted}': expected one of "
                          f"{list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise fail
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise fail
            return tuple(_coerce(a, v, f"{dotted}[{i}]", sources)
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{dotted}[{i}]", sources) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return {str(k): _coerce(args[1] if args else Any, v, f"{dotted}.{k}", sources)
                for k, v in value.items()}
    return _coerce_scalar(tp, value, fail, f"{sources.name(dotted)}: '{dotted}'")


def _coerce_scalar(tp: Any, value: Any, fail: ConfigError, label: str) -> Any:
    """``value`` as the scalar type ``tp``; floats must be finite, ints fit in 64 bits."""
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise fail
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        number = _float(value)
        if number is None:
            raise fail
        if not math.isfinite(number):
            raise ConfigError(f"{label}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail
        if not -_INT64 <= value < _INT64:
            raise ConfigError(f"{label}: expected a 64-bit int, got one of {value.bit_length()} "
                              f"bits")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise fail
    raise ConfigError(f"unsupported config annotation {tp!r}")


def _float(value: Any) -> float | None:
    """A float from a number or a numeric string (YAML 1.1 reads '1e-3' as a string), else None;
    an int too large for a float becomes inf (refused as non-finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except ValueError:
        return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe nested dict of a config dataclass (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) so every run records what it ran with."""
    from contra.atomic import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
