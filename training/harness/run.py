"""The run folder and the training loop's plumbing: config, logging, metrics, samples, state, export.

```
RUN/config.json               resolved config, preset, command line, versions, architecture
RUN/log.txt                   the log (also on the console)
RUN/metrics.csv               step, then the scalars; header fixed at the first write
RUN/samples/step-000100.png   sample grids
RUN/tensorboard/              the same scalars and grids, and the config, for `tensorboard --logdir runs`
RUN/state/                    the latest resumable state (see harness.state)
RUN/<name>.safetensors/.json  the inference checkpoint (fundus_studio.checkpoint)
```
TensorBoard is on whenever the ``tensorboard`` package is installed, unless the command line has
``--no-tensorboard`` (a flag of :func:`harness.add_common_arguments`, so every trainer has it) or the
trainer passes ``Run(..., tensorboard=False)``. Only rank 0 writes; the collective parts (state saving, stop requests) are called by every rank.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fundus_studio import labels
from fundus_studio.checkpoint import config_to_dict, paths_for, save_model
from fundus_studio.errors import CheckpointError, InputError, StudioError
from fundus_studio.imageio import atomic_write, save_png
from training.harness.distributed import Distributed, unwrap
from training.harness.state import TrainState, load_state, read_state_step, save_state, state_folder

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
LOG_FILE = "log.txt"
LOGGER_NAME = "training"
GRID_PAD = 2  # pixels between the tiles of a sample grid
TENSORBOARD_DIR = "tensorboard"
NO_TENSORBOARD_FLAG = "--no-tensorboard"  # declared by harness.add_common_arguments, read here


class _TqdmHandler(logging.StreamHandler):
    """Console logging that does not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(folder: Path | None, *, rank: int) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.addHandler(console)
    if folder is not None:
        fh = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class MetricsCSV:
    """``metrics.csv``: one row per logged step. The header is fixed by the first write; on resume
    rows after the resumed step (logged after the last saved state) are dropped."""

    def __init__(self, path: Path, *, resume_step: int) -> None:
        self.path = path
        self.header: list[str] | None = None
        self._warned: set[str] = set()
        if path.is_file():
            rows = list(csv.reader(io.StringIO(path.read_text())))
            if rows:
                self.header = rows[0]
                kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]
                if len(kept) != len(rows) - 1:
                    buf = io.StringIO()
                    csv.writer(buf, lineterminator="\n").writerows([self.header, *kept])
                    with atomic_write(path, "w") as fh:
                        fh.write(buf.getvalue())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.header is None:
            self.header = ["step", *scalars]
            self._append(self.header)
        extra = set(scalars) - set(self.header) - self._warned
        if extra:
            logging.getLogger(LOGGER_NAME).warning("metrics %s not in %s's header; not recorded", sorted(extra), self.path)
            self._warned |= extra
        self._append([str(step), *(_fmt(scalars.get(k)) for k in self.header[1:])])

    def _append(self, row: list[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(buf.getvalue())


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def versions() -> dict[str, str]:
    import fundus_studio
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "fundus_studio": getattr(fundus_studio, "__version__", "0.1.0"), "platform": platform.platform()}


def label_grid(maps: np.ndarray, *, pad: int = GRID_PAD) -> np.ndarray:
    """(rows, cols, H, W) index maps → one colour image (rows·H + pads, cols·W + pads, 3)."""
    return image_grid(labels.COLORS[maps], pad=pad)


def image_grid(images: np.ndarray, *, pad: int = GRID_PAD) -> np.ndarray:
    """(rows, cols, H, W, 3) uint8 → one (rows·(H+pad)-pad, cols·(W+pad)-pad, 3) image, white gaps."""
    rows, cols, h, w, _ = images.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = images[r, c]
    return out


class StopRequested(KeyboardInterrupt):
    """Raised by :meth:`Run.steps` after saving state on Ctrl-C / SIGTERM."""


class Run:
    """One training run's folder. Create it first thing in ``train(cfg)``.

    Args:
        out: the run folder (created, or resumed when it holds a state).
        kind: what trains here (``acgan``, ``spade``, ``unet``…); a folder of another kind is refused.
        config: the trainer's resolved config dataclass (written to config.json).
        architecture: the part of the config that must match to resume (model configs).
        dist: this process's :class:`Distributed`.
        preset: the preset name, recorded.
    """

    def __init__(self, out: Path, *, kind: str, config: Any, architecture: dict[str, Any], dist: Distributed,
                 preset: str | None = None, tensorboard: bool | None = None) -> None:
        self.out = Path(out)
        # The flag is read off the command line here, in one place, so that no trainer has to forward it.
        self.tensorboard = NO_TENSORBOARD_FLAG not in sys.argv[1:] if tensorboard is None else tensorboard
        self.kind = kind
        self.dist = dist
        self.state_dir = self.out / "state"
        self.samples_dir = self.out / "samples"
        self.architecture = config_to_dict(architecture)
        previous = self._check_previous()
        dist.barrier()  # every rank has checked before rank 0 writes
        if dist.is_main:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            info = {"kind": kind, "preset": preset, "config": config_to_dict(config),
                    "architecture": self.architecture, "command": sys.argv, "versions": versions(),
                    "world_size": dist.world_size, "tensorboard": self.tensorboard, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "history": [*previous.get("history", []), *([previous["command"]] if "command" in previous else [])]}
            with atomic_write(self.out / CONFIG_FILE, "w") as fh:
                json.dump(info, fh, indent=2)
        dist.barrier()
        self.log = setup_logging(self.out if dist.is_main else None, rank=dist.rank)
        self.metrics: MetricsCSV | None = None
        self.tb: Any = None
        self._stop = False

    def _check_previous(self) -> dict[str, Any]:
        path = self.out / CONFIG_FILE
        if not path.is_file():
            if self.out.exists() and any(self.out.iterdir()):
                raise InputError(f"{self.out}: exists and is not a run folder (no {CONFIG_FILE}); choose a new --out")
            return {}
        try:
            prev = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: unreadable ({err}); choose a new --out") from None
        if prev.get("kind") != self.kind:
            raise InputError(f"{self.out}: a {prev.get('kind')!r} run, not a {self.kind!r} run; choose a new --out")
        if state_folder(self.state_dir) is not None and prev.get("architecture") != self.architecture:
            diff = _diff(prev.get("architecture", {}), self.architecture)
            raise InputError(
                f"{self.out}: its saved state has another architecture ({'; '.join(diff)}); resume with the "
                "same preset/model options or choose a new --out")
        return prev

    # --- resume ---------------------------------------------------------------------------------

    def resume(self, state: TrainState, *, require: bool = False) -> int:
        """Load RUN/state into ``state`` if there is one; return the step to continue from (0 if
        fresh). Opens metrics.csv accordingly. ``require`` makes a missing state an error."""
        if read_state_step(self.state_dir) is not None:
            step = load_state(self.state_dir, state, dist=self.dist)
            self.log.info("resumed %s from %s at step %d", self.kind, self.state_dir, step)
        elif require:
            raise CheckpointError(f"{self.state_dir}: --resume asked for, but there is no saved state")
        else:
            step = state.step = 0
            if self.dist.is_main and (self.out / METRICS_FILE).exists():
                (self.out / METRICS_FILE).unlink()  # a fresh start: stale metrics of a stateless run go
        if self.dist.is_main:
            self.metrics = MetricsCSV(self.out / METRICS_FILE, resume_step=step)
            self.tb = self._open_tensorboard(step)
        return step

    def _open_tensorboard(self, step: int) -> Any:
        """A SummaryWriter on RUN/tensorboard (events after ``step`` purged), or None: off or not installed."""
        if not self.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
        except ImportError:
            self.log.info("TensorBoard off: the tensorboard package is not installed (pip install tensorboard)")
            return None
        tb = SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=step + 1)
        config = json.loads((self.out / CONFIG_FILE).read_text())
        # Markdown: a fenced block keeps the JSON's indentation in TensorBoard's text tab.
        tb.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", global_step=step)
        self.log.info("TensorBoard: tensorboard --logdir %s", self.out.parent)
        return tb

    # --- the loop -------------------------------------------------------------------------------

    def steps(self, state: TrainState, *, total: int, snapshot_every: int, postfix_keys: tuple[str, ...] = ()
              ) -> Iterator[int]:
        """Yield the steps state.step+1 … total. After each step's body: count it, save the state every
        ``snapshot_every`` steps and at the end, and honour Ctrl-C/SIGTERM at the step boundary
        (agreed across ranks): the state is saved, then :class:`StopRequested` is raised."""
        self._last_scalars: dict[str, float] = {}
        self._postfix_keys = postfix_keys
        bar = tqdm(total=total, initial=state.step, disable=not self.dist.is_main, dynamic_ncols=True,
                   desc=self.kind, file=sys.stderr)
        handlers = self._install_signals()
        try:
            for step in range(state.step + 1, total + 1):
                yield step
                state.step = step
                bar.update(1)
                if self._last_scalars:
                    bar.set_postfix({k: f"{self._last_scalars[k]:.3g}" for k in postfix_keys if k in self._last_scalars},
                                    refresh=False)
                stop = self.dist.any(self._stop)
                if stop or step % snapshot_every == 0 or step == total:
                    self.save(state)
                if stop:
                    self.log.warning("interrupted: state saved at step %d; re-run the same command to resume", step)
                    raise StopRequested
        finally:
            bar.close()
            self._restore_signals(handlers)

    def _install_signals(self) -> dict[int, Any]:
        import threading
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop = True
            self.log.warning("signal %d: finishing this step, saving state, then stopping (again to abort)", signum)

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for s, h in old.items():
            signal.signal(s, h)

    def save(self, state: TrainState) -> None:
        """Save the resumable state (collective: every rank calls it)."""
        save_state(self.state_dir, state, dist=self.dist, meta={"kind": self.kind})

    # --- outputs --------------------------------------------------------------------------------

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Record scalars for ``step`` (metrics.csv, TensorBoard, the progress bar). Rank 0 only writes."""
        self._last_scalars = scalars
        if not self.dist.is_main:
            return
        if self.metrics is not None:
            self.metrics.write(step, scalars)
        if self.tb is not None:
            for k, v in scalars.items():
                if v is not None:
                    self.tb.add_scalar(k, float(v), step)

    def save_grid(self, step: int, grid: np.ndarray, *, name: str = "step") -> Path:
        """Write a (H, W, 3) uint8 grid to samples/<name>-<step>.png and TensorBoard's image ``name`` (rank 0)."""
        path = self.samples_dir / f"{name}-{step:06d}.png"
        if self.dist.is_main:
            save_png(path, grid)
            if self.tb is not None:
                self.tb.add_image(f"samples/{name}", grid, step, dataformats="HWC")
        return path

    def export(self, module: nn.Module, *, name: str, data: dict[str, Any], step: int,
               metrics: dict[str, float] | None = None, export_to: Path | None = None, half: bool = False) -> Path:
        """Write the inference checkpoint RUN/<name>.safetensors + .json; copy it into ``export_to``."""
        path = paths_for(self.out / name)[0]
        if self.dist.is_main:
            save_model(unwrap(module), path, data=data, step=step, metrics=metrics, half=half,
                       created_by=" ".join(["python", "-m", f"training.{self.kind}", *sys.argv[1:]]))
            if export_to is not None:
                export_to.mkdir(parents=True, exist_ok=True)
                for p in paths_for(path):
                    shutil.copy2(p, export_to / p.name)
                self.log.info("exported %s to %s", path.name, export_to)
        self.dist.barrier()
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
            h.close()


def run_main(train: Callable[[Any], Path], cfg: Any, *, prog: str) -> int:
    """Run ``train(cfg)`` for a trainer's ``main()``: print the checkpoint path; a StudioError becomes a
    one-line message and exit code 2; a Ctrl-C (state saved) exit code 130."""
    try:
        path = train(cfg)
    except StopRequested:
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except StudioError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: saved {a!r}, now {b!r}")
    return out
