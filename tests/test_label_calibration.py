"""Per-grade lesion calibration of the label sampler: applying, saving, matching checkpoints, fitting."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from fundus_studio import labels
from fundus_studio.calibration import CALIBRATION_FILE, LabelCalibration, calibration_for, load_calibration
from fundus_studio.checkpoint import config_to_dict, read_info
from fundus_studio.errors import CheckpointError
from fundus_studio.phantom import write_phantoms
from fundus_studio.pipeline import LabelSampler, LabelSamplingConfig
from fundus_studio.studio import Studio
from training import calibrate_labels

HE, MA = labels.HARD_EXUDATE, labels.MICROANEURYSM


def _calibration(folder: Path, **changes) -> LabelCalibration:
    weights = torch.zeros(labels.NUM_GRADES, labels.NUM_CLASSES)
    weights[0, list(labels.LESIONS)] = -math.inf
    weights[2, HE] = 3.0
    fields = {"log_weights": weights, "prior_file": "label_flow.safetensors",
              "prior_sha256": read_info(folder / "label_flow")["sha256"],
              "upsampler_sha256": read_info(folder / "label_upsampler")["sha256"], "fit": {"note": "test"}}
    return LabelCalibration(**{**fields, **changes})


@pytest.fixture()
def folder(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "checkpoints"))


def test_apply_scales_each_maps_grade_row_and_removes_forbidden_classes(folder: Path) -> None:
    cal = _calibration(folder)
    probs = torch.full((2, labels.NUM_CLASSES, 4, 4), 0.1)
    out = cal.apply(probs, torch.tensor([0, 2]))
    assert (out[0, list(labels.LESIONS)] == 0).all() and torch.equal(out[0, labels.RETINA], probs[0, labels.RETINA])
    assert torch.allclose(out[1, HE], probs[1, HE] * math.exp(3.0)) and torch.equal(out[1, MA], probs[1, MA])


def test_json_round_trip_and_malformed_files_name_themselves(folder: Path) -> None:
    cal = _calibration(folder)
    path = cal.save(folder / CALIBRATION_FILE)
    back = load_calibration(path)
    assert torch.equal(back.log_weights, cal.log_weights) and back.prior_sha256 == cal.prior_sha256
    assert json.loads(path.read_text())["log_weights"]["0"]["hard_exudate"] is None  # never drawn
    broken = json.loads(path.read_text())
    broken["log_weights"]["2"]["vessel"] = 1.0  # not a lesion class
    path.write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match=f"{CALIBRATION_FILE}.*'vessel' is not a lesion class"):
        load_calibration(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{CALIBRATION_FILE}: unreadable"):
        load_calibration(path)


def test_a_calibration_applies_only_to_the_checkpoints_it_was_fitted_for(folder: Path, caplog) -> None:
    prior, upsampler = folder / "label_flow.safetensors", folder / "label_upsampler.safetensors"
    assert calibration_for(prior, upsampler) is None  # none written yet
    _calibration(folder).save(folder / CALIBRATION_FILE)
    assert calibration_for(prior, upsampler) is not None
    assert calibration_for(prior, None) is None  # fitted with the upsampler in the loop (warned)
    caplog.clear()
    assert calibration_for(folder / "acgan.safetensors", None) is None and not caplog.records  # another prior
    _calibration(folder, prior_sha256="0" * 64).save(folder / CALIBRATION_FILE)
    with caplog.at_level(logging.WARNING, logger="fundus_studio.calibration"):
        assert calibration_for(prior, upsampler) is None
    assert "fitted for other label checkpoints" in caplog.text


def test_a_calibration_fitted_for_other_flow_sampling_is_used_with_a_warning(folder: Path, caplog) -> None:
    prior, upsampler = folder / "label_flow.safetensors", folder / "label_upsampler.safetensors"
    fitted = LabelSamplingConfig().flow
    _calibration(folder, fit={"flow_sampling": config_to_dict(fitted)}).save(folder / CALIBRATION_FILE)
    with caplog.at_level(logging.WARNING, logger="fundus_studio.pipeline"):
        same = LabelSampler.from_checkpoint(prior, upsampler=upsampler)
    assert same.calibration is not None and not caplog.records
    other = LabelSamplingConfig(flow=dataclasses.replace(fitted, steps=fitted.steps + 1))
    with caplog.at_level(logging.WARNING, logger="fundus_studio.pipeline"):
        sampler = LabelSampler.from_checkpoint(prior, upsampler=upsampler, config=other)
    assert sampler.calibration is not None
    assert "fitted for flow sampling" in caplog.text and "--flow-steps" in caplog.text


def test_the_studio_samples_with_the_calibration_and_pins_it(folder: Path) -> None:
    plain = Studio.from_checkpoints(folder)
    before, plain_hashes = plain.sample_labels(grade=0, count=3, seed=1, size=64), plain.checkpoint_hashes()
    _calibration(folder).save(folder / CALIBRATION_FILE)
    studio = Studio.from_checkpoints(folder)
    after = studio.sample_labels(grade=0, count=3, seed=1, size=64)
    assert not torch.isin(torch.from_numpy(after), torch.tensor(labels.LESIONS)).any()  # grade 0: no lesion
    assert (before != after).any() or not torch.isin(torch.from_numpy(before), torch.tensor(labels.LESIONS)).any()
    assert studio.sampling_checkpoints() == ("label_flow", "label_upsampler", "label_calibration")
    assert "label_calibration" in studio.checkpoint_hashes() and "label_calibration" not in plain_hashes


def test_the_fit_reaches_the_training_shares_and_never_draws_what_a_grade_lacks(folder: Path, tmp_path: Path) -> None:
    data = write_phantoms(tmp_path / "phantoms", count=15, grade=None, size=64, seed=2, progress=False)
    cfg = calibrate_labels.CalibrateConfig(checkpoints=folder, data=data, maps_per_grade=4, side=32, iterations=10)
    cal = calibrate_labels.calibrate(cfg)
    target = calibrate_labels.training_shares(data, side=32)
    for g, row in cal.fit["shares"].items():
        for name, s in row.items():
            k = labels.INDEX[name]
            if target[int(g), k] == 0:
                assert cal.log_weights[int(g), k] == -math.inf and s["calibrated"] == 0.0
            else:  # bisection on a monotone share: at least as close as without calibration
                assert abs(s["calibrated"] - s["training"]) <= abs(s["uncalibrated"] - s["training"]) + 1e-6
    assert cal.prior_sha256 == read_info(folder / "label_flow")["sha256"]
    assert cal.fit["flow_sampling"] == config_to_dict(LabelSamplingConfig().flow)
    assert calibrate_labels.main(["--checkpoints", str(folder), "--data", str(data), "--maps-per-grade", "2",
                                  "--side", "32", "--flow-steps", "2", "--guidance-interval", "0", "0.5"]) == 0
    written = calibration_for(folder / "label_flow.safetensors", folder / "label_upsampler.safetensors")
    assert written is not None  # fitted for the flags' sampling, and says so
    assert written.fit["flow_sampling"] == {**config_to_dict(LabelSamplingConfig().flow), "steps": 2,
                                            "guidance_interval": [0.0, 0.5]}
