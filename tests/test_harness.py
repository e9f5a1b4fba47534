"""The training harness: run folder, metrics, resumable state, sampling of batches, config resolution."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fundus_studio import labels
from fundus_studio.errors import CheckpointError, InputError
from training import harness
from training.ada import ADAConfig, AdaptiveAugment
from training.harness.run import MetricsCSV
from training.harness.state import state_folder

SINGLE = harness.Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _model_and_opt(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(8, 2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    return model, opt


def test_state_round_trip_restores_models_optimisers_extras_and_rng(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    ada = AdaptiveAugment(ADAConfig(interval=1))
    ada.accumulate(sign_sum=4, count=4)
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)  # advance the stream: the saved state is not the seed's
    state = harness.TrainState(modules={"m": model}, optimizers={"m": opt}, extras={"ada": ada},
                               generators={"train": gen}, step=12)
    harness.save_state(tmp_path / "state", state, dist=SINGLE)
    expect_global, expect_gen = torch.rand(3), torch.rand(3, generator=gen)

    model2, opt2 = _model_and_opt(seed=1)
    ada2, gen2 = AdaptiveAugment(ADAConfig(interval=1)), torch.Generator().manual_seed(0)
    state2 = harness.TrainState(modules={"m": model2}, optimizers={"m": opt2}, extras={"ada": ada2},
                                generators={"train": gen2})
    assert harness.load_state(tmp_path / "state", state2, dist=SINGLE) == 12
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    assert ada2.p == ada.p > 0
    assert torch.equal(torch.rand(3), expect_global) and torch.equal(torch.rand(3, generator=gen2), expect_gen)


def test_state_save_is_atomic_and_falls_back_to_old(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    state = harness.TrainState(modules={"m": model}, optimizers={"m": opt}, step=1)
    folder = tmp_path / "state"
    harness.save_state(folder, state, dist=SINGLE)
    state.step = 2
    harness.save_state(folder, state, dist=SINGLE)
    assert json.loads((folder / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "state.old").exists() and not (tmp_path / ".state.tmp").exists()
    # A crash between the two renames leaves only state.old: it is found and loaded.
    folder.rename(tmp_path / "state.old")
    assert state_folder(folder) == tmp_path / "state.old"
    fresh = harness.TrainState(modules={"m": _model_and_opt(1)[0]})
    assert harness.load_state(folder, fresh, dist=SINGLE) == 2


def test_damaged_state_raises_checkpoint_error(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    harness.save_state(tmp_path / "state", harness.TrainState(modules={"m": model}), dist=SINGLE)
    (tmp_path / "state" / "modules.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state"):
        harness.load_state(tmp_path / "state", harness.TrainState(modules={"m": model}), dist=SINGLE)
    with pytest.raises(CheckpointError, match="no saved training state"):
        harness.load_state(tmp_path / "nothing", harness.TrainState(modules={"m": model}), dist=SINGLE)


def test_metrics_header_fixed_and_resume_drops_later_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    m = MetricsCSV(path, resume_step=0)
    for step in range(1, 6):
        m.write(step, {"a": step * 1.0, "b": 2.0} if step < 4 else {"a": 1.0, "c": 3.0})
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["step", "a", "b"] and len(rows) == 6 and rows[4] == ["4", "1", ""]
    MetricsCSV(path, resume_step=3).write(4, {"a": 9.0, "b": 9.0})
    rows = list(csv.reader(path.open()))
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"] and rows[-1] == ["4", "9", "9"]


def test_batch_sampler_is_stateless_and_splits_ranks() -> None:
    n, b = 10, 3
    s0 = harness.BatchSampler(n, batch=b, seed=1, rank=0, world_size=2)
    s1 = harness.BatchSampler(n, batch=b, seed=1, rank=1, world_size=2)
    assert torch.equal(s0.indices(4), harness.BatchSampler(n, batch=b, seed=1, rank=0, world_size=2).indices(4))
    assert not set(s0.indices(1).tolist()) & set(s1.indices(1).tolist())
    # Consecutive global batches walk through permutations: the first epoch covers every sample.
    seen = torch.cat([torch.cat([s0.indices(k), s1.indices(k)]) for k in (1, 2)])[:9].tolist()
    assert len(set(seen)) == 9
    weighted = harness.BatchSampler(n, batch=200, seed=0, weights=torch.tensor([1.0] + [0.0] * 9))
    assert set(weighted.indices(1).tolist()) == {0}


def test_balanced_weights_equalise_grades() -> None:
    grades = torch.tensor([0, 0, 0, 1])
    w = harness.balanced_weights(grades, num_grades=labels.NUM_GRADES)
    assert w[:3].sum() == pytest.approx(w[3])


@dataclass(frozen=True)
class _Inner:
    width: int = 4  # test field
    rate: float = 0.5  # test field


@dataclass(frozen=True)
class _Cfg:
    preset: str = "a"  # test field
    steps: int = 1  # test field
    betas: tuple[float, float] = (0.0, 0.9)  # test field
    flag: bool = False  # test field
    inner: _Inner = field(default_factory=_Inner)  # test field


def test_resolve_applies_preset_then_flags_then_overrides() -> None:
    presets = {"a": {"steps": 5, "inner": {"width": 8}}, "b": {}}
    cfg = harness.resolve(_Cfg, presets=presets, preset="a", given={"steps": None, "flag": True},
                          overrides=["inner.rate=0.25", "betas=[0.5, 0.99]"])
    assert cfg == _Cfg(preset="a", steps=5, betas=(0.5, 0.99), flag=True, inner=_Inner(width=8, rate=0.25))
    with pytest.raises(ValueError, match="unknown field"):
        harness.resolve(_Cfg, presets=presets, preset="b", given={}, overrides=["inner.depth=3"])
    with pytest.raises(ValueError, match="expected int"):
        harness.resolve(_Cfg, presets=presets, preset="b", given={}, overrides=["steps=many"])


def test_resize_index_map_modes() -> None:
    m = np.full((16, 16), labels.RETINA, np.uint8)
    m[5, 5] = labels.MICROANEURYSM  # one pixel: lost by area, kept by keep-lesions
    assert harness.resize_index_map(m, 4, mode="area").max() == labels.RETINA
    kept = harness.resize_index_map(m, 4, mode="keep-lesions")
    assert (kept == labels.MICROANEURYSM).sum() == 1 and kept[1, 1] == labels.MICROANEURYSM
    assert harness.resize_index_map(m, 32, mode="area").shape == (32, 32)
    with pytest.raises(ValueError):
        harness.resize_index_map(m, 4, mode="bicubic")


def test_holdout_split_is_deterministic_and_stable_under_additions() -> None:
    ids = [f"s{i}" for i in range(200)]
    tr, ho = harness.holdout_split(ids, fraction=0.25, seed=3)
    assert len(tr) + len(ho) == 200 and 25 < len(ho) < 75 and not set(tr) & set(ho)
    _, ho2 = harness.holdout_split([*ids, "new"], fraction=0.25, seed=3)
    assert set(ho) <= set(ho2)


def test_label_grid_layout() -> None:
    maps = np.zeros((2, 3, 8, 8), np.uint8)
    maps[1, 2] = labels.VESSEL
    grid = harness.label_grid(maps, pad=2)
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 4, 3)
    assert tuple(grid[-1, -1]) == labels.CLASSES[labels.VESSEL].color and tuple(grid[8, 0]) == (255, 255, 255)


def test_run_folder_refuses_foreign_folders_and_other_kinds(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a run folder"):
        harness.Run(tmp_path / "x", kind="acgan", config=_Cfg(), architecture={}, dist=SINGLE)
    run = harness.Run(tmp_path / "r", kind="unet", config=_Cfg(), architecture={"w": 1}, dist=SINGLE, preset="a")
    run.close()
    info = json.loads((tmp_path / "r" / "config.json").read_text())
    assert info["kind"] == "unet" and info["preset"] == "a" and "torch" in info["versions"]
    with pytest.raises(InputError, match="not a 'acgan' run"):
        harness.Run(tmp_path / "r", kind="acgan", config=_Cfg(), architecture={}, dist=SINGLE)


def test_steps_loop_saves_and_resumes(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    run = harness.Run(tmp_path / "r", kind="toy", config=_Cfg(), architecture={}, dist=SINGLE)
    state = harness.TrainState(modules={"m": model}, optimizers={"m": opt})
    assert run.resume(state) == 0
    seen = []
    for step in run.steps(state, total=5, snapshot_every=2):
        seen.append(step)
        run.log_scalars(step, {"loss": float(step)})
    run.close()
    assert seen == [1, 2, 3, 4, 5] and state.step == 5
    run = harness.Run(tmp_path / "r", kind="toy", config=_Cfg(), architecture={}, dist=SINGLE)
    state = harness.TrainState(modules={"m": _model_and_opt(1)[0]})
    assert run.resume(state, require=True) == 5
    assert list(run.steps(state, total=7, snapshot_every=100)) == [6, 7]
    run.close()


def test_pairs_subset_keeps_the_order_of_the_index() -> None:
    images = torch.arange(4).view(4, 1, 1, 1).expand(4, 2, 2, 3).to(torch.uint8)
    pairs = harness.Pairs(images, torch.zeros(4, 2, 2, dtype=torch.uint8), torch.arange(4), ("a", "b", "c", "d"),
                          {"dataset": "x", "count": 4})
    sub = pairs.subset([3, 1])
    assert sub.ids == ("d", "b") and sub.grades.tolist() == [3, 1] and sub.images[:, 0, 0, 0].tolist() == [3, 1]
    assert sub.description == {"dataset": "x", "count": 2} and pairs.description["count"] == 4


# --- TensorBoard ------------------------------------------------------------------------------------


def _events(folder: Path) -> Any:
    """TensorBoard's own reader over RUN/tensorboard, everything loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_smoke_training_writes_tensorboard_events_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoard is optional at run time; requirements-test.txt installs it")
    from tests.test_acgan import smoke, write_blob_dataset

    monkeypatch.setattr("sys.argv", ["python -m training.acgan"])  # pytest's own flags are not the trainer's
    data = write_blob_dataset(tmp_path / "data", count=10)
    smoke(data, tmp_path / "run")
    acc = _events(tmp_path / "run" / "tensorboard")
    tags = acc.Tags()
    # The scalars are metrics.csv's, step for step and value for value (to float32).
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for name in ("loss_d", "loss_g", "ada_p", "r_t"):
        assert name in tags["scalars"]
        events = acc.Scalars(name)
        assert [e.step for e in events] == [int(r["step"]) for r in rows]
        assert np.allclose([e.value for e in events], [float(r[name]) for r in rows], rtol=1e-5)
    # The sample grids, as PNG-encoded images at the steps of samples/step-*.png.
    images = acc.Images("samples/step")
    assert [e.step for e in images] == [2, 4]
    grid = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "step-000004.png"))
    assert np.array_equal(grid[..., :3], png)
    # The run's config as text.
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"kind": "acgan"' in text and '"preset": "smoke"' in text
    assert json.loads((tmp_path / "run" / "config.json").read_text())["tensorboard"] is True


def test_no_tensorboard_flag_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import acgan

    monkeypatch.setattr("sys.argv", ["python -m training.acgan", "--no-tensorboard"])
    cfg = acgan.parse_args(["--data", "d", "--out", str(tmp_path / "r"), "--no-tensorboard"])  # a known flag
    run = harness.Run(cfg.out, kind="acgan", config=_Cfg(), architecture={}, dist=SINGLE)
    assert run.resume(harness.TrainState(modules={"m": _model_and_opt()[0]})) == 0
    run.log_scalars(1, {"loss": 1.0})
    run.save_grid(1, np.zeros((4, 4, 3), np.uint8))
    run.close()
    assert not (tmp_path / "r" / "tensorboard").exists() and (tmp_path / "r" / "metrics.csv").is_file()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["tensorboard"] is False
    # Programmatic runs choose explicitly, whatever the command line says.
    assert harness.Run(tmp_path / "s", kind="toy", config=_Cfg(), architecture={}, dist=SINGLE,
                       tensorboard=True).tensorboard is True


def test_only_rank_zero_writes_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setattr("sys.argv", ["python -m training.toy"])
    # Rank 1 seen alone (world size 1 keeps the collectives local): it must write nothing.
    rank1 = harness.Distributed(rank=1, world_size=1, local_rank=1, device=torch.device("cpu"))
    run = harness.Run(tmp_path / "r", kind="toy", config=_Cfg(), architecture={}, dist=rank1)
    run.resume(harness.TrainState(modules={"m": _model_and_opt()[0]}))
    run.log_scalars(1, {"loss": 1.0})
    run.close()
    assert not (tmp_path / "r" / "tensorboard").exists()
