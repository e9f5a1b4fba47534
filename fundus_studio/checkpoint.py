"""Inference checkpoints: ``name.safetensors`` (weights) + ``name.json`` (everything else). No pickle.

```
name.json  {"format": "fundus-studio-checkpoint", "version": 1,
            "class": "fundus_studio.models.acgan.Generator",          # the nn.Module to rebuild
            "config_class": "fundus_studio.models.acgan.ACGANConfig", "config": {...},
            "dtype": "float32" | "float16", "sha256": "<of name.safetensors>",
            "data": {...}, "step": 1234, "metrics": {...}, "created_by": "python -m training.acgan ..."}
```

:func:`load_model` imports the class (only from ``fundus_studio.models``), rebuilds its config from the
JSON, constructs the module and loads the weights. Anything missing, corrupt or mismatched raises
:class:`~fundus_studio.errors.CheckpointError` naming the file and how to regenerate it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from fundus_studio.errors import CheckpointError
from fundus_studio.imageio import atomic_write

FORMAT = "fundus-studio-checkpoint"
VERSION = 1
# Classes may only be imported from here: a checkpoint's JSON must not name arbitrary code.
MODEL_PACKAGE = "fundus_studio.models."
REGENERATE_HINT = (
    "regenerate it by re-exporting from its run folder (re-run the training command with the same "
    "--out, which resumes and rewrites RUN/<name>.safetensors) or by retraining; see docs/training.md"
)


# --- config dataclasses ⇄ JSON ------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """A (possibly nested) config dataclass → JSON-able dict (tuples become lists, paths strings)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return v
    return plain(config)


def _convert(value: Any, hint: Any) -> Any:
    """Turn a JSON value back into the annotated type: nested dataclasses, tuples, Paths."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return value if value is None or len(args) != 1 else _convert(value, args[0])
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        return tuple(_convert(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any], *, strict: bool = True) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output (validation runs in __post_init__).

    With ``strict`` unknown keys raise ``ValueError``; missing keys take the class defaults.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown and strict:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**{k: _convert(v, hints[k]) for k, v in data.items() if k in names})


# --- saving -------------------------------------------------------------------------------------


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def paths_for(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``x``, ``x.json`` or ``x.safetensors`` → (x.safetensors, x.json)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    data: dict[str, Any] | None = None,
    step: int | None = None,
    metrics: dict[str, float] | None = None,
    created_by: str | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` (which must have a dataclass ``.config``) as safetensors + JSON; return the
    ``.safetensors`` path. ``half`` stores floating tensors as float16 (loaded back as float32)."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(model).__name__} has no dataclass .config; it cannot be rebuilt from JSON")
    if not type(model).__module__.startswith(MODEL_PACKAGE):
        raise TypeError(f"{_qualname(type(model))}: checkpointed models must live in {MODEL_PACKAGE}")
    weights_path, json_path = paths_for(path)
    dtype = torch.float16 if half else None
    tensors = {
        k: (v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    blob = save_safetensors_bytes(tensors)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "class": _qualname(type(model)),
        "config_class": _qualname(type(config)),
        "config": config_to_dict(config),
        "dtype": "float16" if half else "float32",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "data": data or {},
        "step": step,
        "metrics": metrics or {},
        "created_by": created_by,
    }
    with atomic_write(weights_path) as fh:
        fh.write(blob)
    with atomic_write(json_path, "w") as fh:
        json.dump(info, fh, indent=2)
    return weights_path


# --- loading ------------------------------------------------------------------------------------


def _fail(path: Path, what: str, info: dict[str, Any] | None = None) -> CheckpointError:
    how = REGENERATE_HINT
    if info and info.get("created_by"):
        how += f" (it was made by: {info['created_by']})"
    return CheckpointError(f"{path}: {what}; {how}")


def read_format_json(path: Path, *, format: str, version: int, what: str,
                     fail: Callable[[Path, str], CheckpointError]) -> dict[str, Any]:
    """A JSON file of ours: an object whose ``format`` is ``format`` and whose ``version`` this release
    reads (≤ ``version``); ``fail(path, why)`` builds the error otherwise (``what`` names the kind)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise fail(path, f"unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != format:
        raise fail(path, f"not a {what}")
    if not isinstance(info.get("version"), int) or info["version"] > version:
        raise fail(path, f"format version {info.get('version')!r}; this release reads ≤ {version}")
    return info


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's JSON (without loading weights)."""
    _, json_path = paths_for(path)
    if not json_path.is_file():
        raise _fail(json_path, "missing (every checkpoint needs its .json beside the .safetensors)")
    info = read_format_json(json_path, format=FORMAT, version=VERSION, what=f"{FORMAT} description",
                            fail=lambda p, why: _fail(p, why))
    for key, kind in (("class", str), ("config_class", str), ("config", dict)):
        if not isinstance(info.get(key), kind):
            raise _fail(json_path, f"field {key!r} missing or not a {kind.__name__}")
    return info


def _import(name: str, *, json_path: Path, info: dict[str, Any]) -> type:
    if not name.startswith(MODEL_PACKAGE):
        raise _fail(json_path, f"class {name!r} is not in {MODEL_PACKAGE.rstrip('.')}", info)
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise _fail(json_path, f"class {name!r} does not exist in this release", info) from None
    if not isinstance(obj, type):
        raise _fail(json_path, f"{name!r} is not a class", info)
    return obj


def load_model(
    path: str | os.PathLike[str],
    *,
    expected: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the module described by ``path``'s JSON and load its weights, in eval mode.

    ``expected`` (e.g. ``Generator``, or a tuple of classes) refuses a checkpoint of another class.
    """
    weights_path, json_path = paths_for(path)
    info = read_info(json_path)
    cls = _import(info["class"], json_path=json_path, info=info)
    config_cls = _import(info["config_class"], json_path=json_path, info=info)
    if expected is not None and not issubclass(cls, expected):
        names = " or ".join(c.__name__ for c in (expected if isinstance(expected, tuple) else (expected,)))
        raise _fail(json_path, f"holds a {cls.__name__}, expected a {names}", info)
    try:
        config = config_from_dict(config_cls, info["config"])
    except (TypeError, ValueError) as err:
        raise _fail(json_path, f"invalid config ({err})", info) from None
    if not weights_path.is_file():
        raise _fail(weights_path, "missing", info)
    blob = weights_path.read_bytes()
    if info.get("sha256") and hashlib.sha256(blob).hexdigest() != info["sha256"]:
        raise _fail(weights_path, "corrupt (its SHA-256 differs from the one recorded in the .json)", info)
    try:
        tensors = load_safetensors_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise _fail(weights_path, f"corrupt or not a safetensors file ({err})", info) from None
    model = cls(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise _fail(weights_path, f"weights do not match {cls.__name__}({config}): {' '.join(first[:3])}", info) from None
    return model.to(device).eval()
