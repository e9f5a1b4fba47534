"""The training harness shared by every trainer (ACGAN, SPADE, U-Net, grade classifier).

A trainer is ``parse_args() -> Config``, ``train(cfg) -> Path``, ``main()``; ``train`` reads::

    dist = init_distributed(device=cfg.device)
    run = Run(cfg.out, kind="spade", config=cfg, architecture={"model": cfg.model}, dist=dist, preset=cfg.preset)
    ...build models, optimisers...
    state = TrainState(modules={...}, optimizers={...}, extras={...}, generators={"train": gen})
    run.resume(state, require=cfg.resume)
    for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every):
        ...one optimisation step...
        run.log_scalars(step, {...})
    run.export(model, name="spade", data=..., step=state.step)

See docs/training.md.
"""

from training.harness.config import add_common_arguments, merge, resolve
from training.harness.data import (
    DOWNSAMPLE_MODES,
    BatchSampler,
    LabelMaps,
    Pairs,
    balanced_weights,
    holdout_split,
    load_label_maps,
    load_pairs,
    resize_index_map,
    resize_photo,
)
from training.harness.distributed import (
    Distributed,
    init_distributed,
    set_threads,
    shutdown,
    unwrap,
    weights_checksum,
    write_checksums,
)
from training.harness.ema import ema_decay, ema_update, make_ema
from training.harness.run import Run, StopRequested, image_grid, label_grid, run_main
from training.harness.state import TrainState, load_state, save_state

__all__ = [
    "DOWNSAMPLE_MODES", "BatchSampler", "Distributed", "LabelMaps", "Pairs", "Run", "StopRequested", "TrainState",
    "add_common_arguments", "balanced_weights", "ema_decay", "ema_update", "holdout_split", "image_grid",
    "init_distributed", "label_grid", "load_label_maps", "load_pairs", "load_state", "make_ema", "merge",
    "resize_index_map", "resize_photo", "resolve", "run_main", "set_threads", "save_state", "shutdown", "unwrap", "weights_checksum",
    "write_checksums",
]
