"""Reading the reference's ``.pt`` checkpoints as plain data, whatever OmegaConf wrote them.

The reference saves ``{"state_dict", "ema_state_dict", "config", ...}`` with ``torch.save``; its
``config`` is a pickled OmegaConf ``DictConfig``. Unpickling that with OmegaConf itself would run
OmegaConf's code (and OmegaConf 2.4 pickles tuples as ``TupleConfig`` through
``_operator.getitem``), so we never import it. :func:`load_reference_checkpoint` runs torch's
``weights_only`` unpickler, which refuses every global it is not given, and gives it only:

* inert stand-ins for OmegaConf's classes (``DictConfig``, ``ListConfig``, ``TupleConfig``, the
  value nodes and their metadata), which record the state the pickle hands them;
* inert stand-ins for the ``typing`` hints OmegaConf stores as metadata, and an
  ``_operator.getitem`` that only subscripts those stand-ins and refuses anything else.

:func:`to_plain` then turns the stand-ins into dicts, lists, tuples and values. Nothing else is
importable or callable from the pickle: ``os.system``, ``builtins.eval`` or a ``getitem`` on
anything but a type-hint stand-in are refused. Tensors load as with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

from ..nn import ModelLoadError


class _Recorded:
    """A stand-in that keeps the state the pickle gives it and runs nothing."""

    __slots__ = ("state",)

    def __setstate__(self, state):
        self.state = state


class _DictConfig(_Recorded):
    __slots__ = ()


class _ListConfig(_Recorded):
    __slots__ = ()


class _TupleConfig(_Recorded):
    __slots__ = ()


class _ValueNode(_Recorded):
    __slots__ = ()


class _Metadata(_Recorded):
    __slots__ = ()


class _TypeHint:
    """Stands for ``typing.Any``, ``typing.Tuple[...]`` and the like (metadata we ignore)."""

    def __init__(self, name: str = "typing"):
        self.name = name


def _subscript(obj, key):
    """``_operator.getitem`` as OmegaConf 2.4 uses it: ``typing.Tuple[Any, ...]`` and nothing else."""
    if isinstance(obj, _TypeHint):
        return _TypeHint(f"{obj.name}[...]")
    raise torch.serialization.pickle.UnpicklingError(
        f"refused getitem on {type(obj).__name__}: only type hints may be subscripted")


_OMEGACONF = {
    "omegaconf.dictconfig.DictConfig": _DictConfig,
    "omegaconf.listconfig.ListConfig": _ListConfig,
    "omegaconf.tupleconfig.TupleConfig": _TupleConfig,
    "omegaconf.base.ContainerMetadata": _Metadata,
    "omegaconf.base.Metadata": _Metadata,
    **{f"omegaconf.nodes.{n}": _ValueNode for n in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "EnumNode")},
}
_TYPING = ("Any", "Tuple", "List", "Dict", "Optional", "Union", "Sequence", "Mapping")


def _allowlist() -> list:
    entries = [(cls, name) for name, cls in _OMEGACONF.items()]
    hints = {n: _TypeHint(f"typing.{n}") for n in _TYPING}
    entries += [(hint, f"typing.{n}") for n, hint in hints.items()]
    entries += [(_subscript, "_operator.getitem"), (Ellipsis, "builtins.Ellipsis"), (Ellipsis, "__builtin__.Ellipsis")]
    entries += [collections.defaultdict, dict, list, tuple, int, float, str, bool, type(None)]
    return entries


def load_reference_checkpoint(path: str | Path) -> dict:
    """The checkpoint's top-level dict: tensors as ``weights_only=True`` loads them, and an OmegaConf
    ``config`` as plain dicts/lists/tuples (:func:`to_plain`); a one-line ``ModelLoadError`` else."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_allowlist()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for refused globals, zip errors, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{path}: cannot be read safely: {msg}") from None
    if not isinstance(ckpt, dict):
        raise ModelLoadError(f"{path}: not a reference checkpoint (top level is {type(ckpt).__name__})")
    if "config" in ckpt:
        ckpt["config"] = resolve_interpolations(to_plain(ckpt["config"]))
    return ckpt


def to_plain(obj, _depth: int = 0):
    """OmegaConf stand-ins -> dicts, lists, tuples and values; anything else is returned as is."""
    if _depth > 100:
        raise ModelLoadError("checkpoint config nests deeper than 100 levels")
    if isinstance(obj, (_DictConfig, _ListConfig, _TupleConfig)):
        content = _state(obj).get("_content")
        if isinstance(content, dict):
            return {k: to_plain(v, _depth + 1) for k, v in content.items()}
        if isinstance(content, (list, tuple)):
            seq = [to_plain(v, _depth + 1) for v in content]
            return tuple(seq) if isinstance(obj, _TupleConfig) else seq
        return content  # None, "???" (missing) or an interpolation string
    if isinstance(obj, _ValueNode):
        return to_plain(_state(obj).get("_val"), _depth + 1)
    if isinstance(obj, dict):
        return {k: to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, _depth + 1) for v in obj)
    return obj


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def resolve_interpolations(cfg):
    """Replace values that are exactly ``${a.b.c}`` (absolute OmegaConf interpolations) by the
    value at that path; other strings, and paths that do not resolve, stay as they are."""
    def lookup(path: str, seen: tuple):
        node = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None, False
            node = node[part]
        m = _INTERPOLATION.match(node) if isinstance(node, str) else None
        if m and m[1] not in seen:
            return lookup(m[1], seen + (m[1],))
        return node, m is None

    def walk(node, depth: int):
        if depth > 100:
            raise ModelLoadError("checkpoint config nests (or interpolates itself) deeper than 100 levels")
        if isinstance(node, dict):
            return {k: walk(v, depth + 1) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v, depth + 1) for v in node)
        m = _INTERPOLATION.match(node) if isinstance(node, str) else None
        if m:
            value, ok = lookup(m[1], (m[1],))
            return walk(value, depth + 1) if ok else node
        return node

    return walk(cfg, 0)


def _state(obj: _Recorded) -> dict:
    state = getattr(obj, "state", None)
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
        state = state[0]
    return state if isinstance(state, dict) else {}


__all__ = ["load_reference_checkpoint", "resolve_interpolations", "to_plain"]
