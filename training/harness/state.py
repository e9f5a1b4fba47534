"""The resumable training state, saved without pickle and atomically.

```
RUN/state/state.json           step, extras (e.g. ADA), optimiser hyper-parameters and non-tensor
                               state, RNG states of python/numpy per rank, format version
RUN/state/modules.safetensors  every module's state dict, keys "<name>.<param>"
RUN/state/optim.safetensors    every optimiser's tensors, keys "<name>/<param index>/<key>"
RUN/state/rng.safetensors      torch (CPU, CUDA) and trainer generator states per rank
```

The folder is written as ``RUN/.state.tmp`` and renamed over ``RUN/state`` (the previous one is
kept as ``RUN/state.old`` until the rename is done), so a crash mid-save leaves the last state
loadable.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fundus_studio.errors import CheckpointError
from fundus_studio.imageio import atomic_write
from training.harness.distributed import Distributed, unwrap

STATE_FORMAT = "fundus-studio-train-state"
STATE_VERSION = 1


class JSONStateful(Protocol):
    """Anything with a JSON-able state (e.g. the ADA controller)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """What a trainer must get back to continue exactly: give it every stateful object by name."""

    modules: dict[str, nn.Module]  # e.g. {"G": G, "D": D, "G_ema": G_ema} (DDP wrappers are unwrapped)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    extras: dict[str, JSONStateful] = field(default_factory=dict)  # JSON-able controllers (ADA, schedules)
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # this rank's RNG streams
    step: int = 0  # completed optimisation steps


# --- flattening ---------------------------------------------------------------------------------


def _json_safe(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state dict → (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[key] = _json_safe(value)
    return tensors, {"param_groups": _json_safe(sd["param_groups"]), "plain": plain}


def unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, _, k = key[len(prefix):].partition("/")
            state.setdefault(int(idx), {})[k] = value
    for idx, entry in info["plain"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: (tensors, JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    for name, gen in generators.items():
        tensors[f"gen/{name}"] = gen.get_state()
    np_state = np.random.get_state()
    return tensors, {
        "python": _json_safe(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *(_json_safe(v) for v in np_state[2:])],
    }


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    for name, gen in generators.items():
        if f"gen/{name}" in tensors:
            gen.set_state(tensors[f"gen/{name}"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- saving and loading -------------------------------------------------------------------------


def save_state(folder: Path, state: TrainState, *, dist: Distributed, collective: bool = True,
               meta: dict[str, Any] | None = None) -> None:
    """Write ``state`` to ``folder`` atomically. Collective (every rank must call) unless
    ``collective`` is False, in which case rank 0 saves alone with only its own RNG state."""
    rng_t, rng_j = capture_rng(state.generators)
    if collective and dist.enabled:
        gathered = dist.gather_objects((rng_t, rng_j)) if dist.enabled else [(rng_t, rng_j)]
    else:
        gathered = [(rng_t, rng_j)] if dist.is_main else []
    if dist.is_main:
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        old = folder.with_name(f"{folder.name}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        modules = {f"{n}.{k}": v.detach().cpu().contiguous().clone()
                   for n, m in state.modules.items() for k, v in unwrap(m).state_dict().items()}
        save_file(modules, str(tmp / "modules.safetensors"))
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_json: dict[str, Any] = {}
        for name, opt in state.optimizers.items():
            t, j = flatten_optimizer(name, opt)
            opt_tensors.update(t)
            opt_json[name] = j
        save_file(opt_tensors, str(tmp / "optim.safetensors"))
        save_file({f"rank{r}/{k}": v.cpu().contiguous() for r, (t, _) in enumerate(gathered) for k, v in t.items()},
                  str(tmp / "rng.safetensors"))
        info = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": state.step, "world_size": dist.world_size,
            "modules": sorted(state.modules), "optimizers": opt_json,
            "extras": {n: _json_safe(e.state_dict()) for n, e in state.extras.items()},
            "rng": {str(r): j for r, (_, j) in enumerate(gathered)}, "meta": meta or {},
        }
        with atomic_write(tmp / "state.json", "w") as fh:
            json.dump(info, fh)
        # Swap: state → state.old, tmp → state, drop state.old. A crash between the two renames
        # leaves state.old, which load_state falls back on.
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    if collective:
        dist.barrier()


def state_folder(folder: Path) -> Path | None:
    """The loadable state folder: ``folder``, else the ``.old`` left by a crash mid-swap, else None."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(f"{folder.name}.old")):
        if (cand / "state.json").is_file():
            return cand
    return None


def read_state_step(folder: Path) -> int | None:
    found = state_folder(folder)
    if found is None:
        return None
    try:
        return int(json.loads((found / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_state(folder: Path, state: TrainState, *, dist: Distributed) -> int:
    """Load a saved state into ``state``'s objects (in place); return the step. Raises
    CheckpointError naming the file when something is missing or does not fit."""
    found = state_folder(folder)
    if found is None:
        raise CheckpointError(f"{folder}: no saved training state to resume from")
    path = found / "state.json"
    try:
        info = json.loads(path.read_text())
        if info.get("format") != STATE_FORMAT or info.get("version") != STATE_VERSION:
            raise CheckpointError(f"{path}: not a version-{STATE_VERSION} {STATE_FORMAT}")
        modules = load_file(str(found / "modules.safetensors"), device="cpu")
        for name, module in state.modules.items():
            prefix = f"{name}."
            sd = {k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)}
            unwrap(module).load_state_dict(sd, strict=True)
        opt_tensors = load_file(str(found / "optim.safetensors"), device="cpu")
        for name, opt in state.optimizers.items():
            opt.load_state_dict(unflatten_optimizer(name, opt_tensors, info["optimizers"][name]))
        for name, extra in state.extras.items():
            extra.load_state_dict(info["extras"][name])
        rng = load_file(str(found / "rng.safetensors"), device="cpu")
        key = str(dist.rank)
        if key in info["rng"]:
            prefix = f"rank{dist.rank}/"
            restore_rng({k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}, info["rng"][key],
                        state.generators)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as err:
        raise CheckpointError(
            f"{found}: training state unreadable or does not fit this run ({type(err).__name__}: {err}); "
            "delete that folder to start over"
        ) from None
    state.step = int(info["step"])
    return state.step
