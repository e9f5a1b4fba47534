"""Copy an inference checkpoint into a checkpoints folder, optionally as float16 (half the size).

    python -m training.export_checkpoint runs/spade-demo/spade.safetensors --to checkpoints --half

The JSON's training description (data, step, metrics, the command that made it) is kept; the weights
are re-saved through :func:`fundus_studio.checkpoint.save_model`, so the SHA-256 matches the new file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fundus_studio.checkpoint import load_model, paths_for, read_info, save_model
from fundus_studio.errors import StudioError


def export_checkpoint(path: Path, *, to: Path, half: bool) -> Path:
    """Re-save ``path`` (``name.safetensors``) as ``to/name.safetensors`` + ``.json``; return it."""
    info = read_info(path)
    model = load_model(path)
    name = paths_for(path)[0].name.removesuffix(".safetensors")
    return save_model(model, to / name, data=info.get("data"), step=info.get("step"), metrics=info.get("metrics"),
                      created_by=info.get("created_by"), half=half)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export_checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+", help="NAME.safetensors files (their .json beside them)")
    p.add_argument("--to", type=Path, required=True, help="destination folder")
    p.add_argument("--half", action="store_true", help="store floating-point weights as float16")
    args = p.parse_args(argv)
    try:
        for path in args.checkpoints:
            print(f"wrote {export_checkpoint(path, to=args.to, half=args.half)}")
    except StudioError as err:
        print(f"export_checkpoint: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
