"""Command-line plumbing shared by the trainers: common flags, presets, typed overrides.

A trainer declares a frozen config dataclass and a plain dict of presets (name → nested dict of
field values). :func:`resolve` applies, in order: dataclass defaults, the preset, the typed flags the
user gave, then generic ``--set path.to.field=value`` overrides (typed from the annotations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from fundus_studio.checkpoint import config_from_dict, config_to_dict


def add_common_arguments(parser: argparse.ArgumentParser, *, presets: dict[str, dict[str, Any]], default_preset: str) -> None:
    """The flags every trainer has. Values left at None mean "not given" (the preset decides)."""
    parser.add_argument("--data", type=Path, required=True, help="studio dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder (re-running resumes it)")
    parser.add_argument("--preset", choices=sorted(presets), default=default_preset,
                        help=f"recipe (default {default_preset})")
    parser.add_argument("--steps", type=int, default=None, help="TOTAL optimisation steps (resume continues to it)")
    parser.add_argument("--seed", type=int, default=None, help="run seed")
    parser.add_argument("--resume", action="store_true", help="fail unless RUN/state exists (resuming is automatic)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: torch's; 1 is fastest on a busy shared machine)")
    parser.add_argument("--export-to", type=Path, default=None, help="also copy the inference checkpoint here")
    # Read by harness.Run from the command line (one place for every trainer); declared here for --help.
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="do not write RUN/tensorboard (on by default when the tensorboard package is installed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any config field, e.g. --set model.g_channels=32 (repeatable)")


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _field_hint(cls: type, path: str) -> Any:
    hint: Any = cls
    for k in path.split("."):
        if not dataclasses.is_dataclass(hint):
            raise ValueError(f"--set {path}: {k!r} is not a config field")
        hints = typing.get_type_hints(hint)
        if k not in hints:
            raise ValueError(f"--set {path}: unknown field {k!r} (fields: {', '.join(sorted(hints))})")
        hint = hints[k]
    return hint


def _parse_value(text: str, hint: Any, *, what: str) -> Any:
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{what}: expected true/false, got {text!r}")
    if hint in (int, float, str):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(f"{what}: expected {hint.__name__}, got {text!r}") from None
    try:
        return json.loads(text)  # tuples, lists, optional values: JSON syntax
    except json.JSONDecodeError:
        return text


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(cls: type, *, presets: dict[str, dict[str, Any]], preset: str, given: dict[str, Any],
            overrides: list[str]) -> Any:
    """Build the config: defaults ← presets[preset] ← given (None values skipped) ← --set overrides.

    Raises ValueError (from parsing or the dataclasses' __post_init__) with the field named.
    """
    tree = merge(config_to_dict(cls()) if _has_all_defaults(cls) else {}, presets[preset])
    tree = merge(tree, {k: v for k, v in given.items() if v is not None})
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        _set_path(tree, path.strip(), _parse_value(text, _field_hint(cls, path.strip()), what=f"--set {path}"))
    tree["preset"] = preset
    return config_from_dict(cls, config_to_dict(tree))


def _has_all_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))
