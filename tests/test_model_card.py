"""checkpoints/README.md: its Hub-style front matter agrees with the checkpoints' JSON and the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with requirements-test.txt")

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "checkpoints" / "README.md"
REPORT = ROOT / "reports" / "phantoms" / "report.json"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("model_card", ROOT / "scripts" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    text = CARD.read_text()
    assert text.startswith("---\n"), f"{CARD} must start with YAML front matter"
    front, _ = _script().split_card(text)
    assert front is not None, f"{CARD}: front matter not closed by a '---' line"
    return yaml.safe_load(front.strip().strip("-"))


def _metrics(card: dict[str, Any], task: str) -> dict[str, float]:
    results = card["model-index"][0]["results"]
    (result,) = [r for r in results if r["task"]["name"] == task]
    return {m["name"]: m["value"] for m in result["metrics"]}


def test_front_matter_is_what_the_script_writes() -> None:
    front, _ = _script().split_card(CARD.read_text())
    assert front == _script().front_matter(), "stale model card: run python scripts/model_card.py"


def test_hub_fields(card: dict[str, Any]) -> None:
    assert card["license"] == "mit" and card["library_name"] == "fundus-studio"
    assert "diabetic-retinopathy" in card["tags"] and card["datasets"]
    for result in card["model-index"][0]["results"]:
        assert result["task"]["type"] and result["dataset"]["name"]
        assert all(isinstance(m["value"], float) and m["name"] and m["type"] for m in result["metrics"])


def test_checkpoint_entries_match_their_json(card: dict[str, Any]) -> None:
    import hashlib

    from fundus_studio.calibration import CALIBRATION_FILE

    entries = {c["file"]: c for c in card["checkpoints"]}
    jsons = [p for p in sorted((ROOT / "checkpoints").glob("*.json")) if p.name != CALIBRATION_FILE]
    assert sorted(entries) == sorted(p.with_suffix(".safetensors").name for p in jsons)
    for path in jsons:
        info = json.loads(path.read_text())
        entry = entries[path.with_suffix(".safetensors").name]
        assert (entry["sha256"], entry["step"], entry["class"]) == (info["sha256"], info["step"], info["class"])
    calibration = ROOT / "checkpoints" / CALIBRATION_FILE  # a shipped calibration is named, with its hash
    assert (card.get("label_calibration") or {}).get("sha256") == (
        hashlib.sha256(calibration.read_bytes()).hexdigest() if calibration.is_file() else None)


def test_figures_match_the_report_and_the_checkpoints(card: dict[str, Any]) -> None:
    report = json.loads(REPORT.read_text())
    fidelity = report["labels"]["grade_fidelity"]["generated"]
    generator = _metrics(card, f"grade-conditioned label maps ({report['labels'].get('generator', 'acgan')})")
    assert generator["grade-classifier accuracy on generated maps"] == round(fidelity["accuracy"], 4)
    assert generator["quadratic-weighted kappa on generated maps"] == round(fidelity["kappa"], 4)
    spade = _metrics(card, "label map to photo (SPADE)")
    assert spade["SSIM to the real photo, seeded style"] == round(report["renders"]["photo"]["seeded"]["ssim"], 4)
    iou = report["renders"]["segmentation"]["render"]["pooled"]["iou"]["hard_exudate"]
    assert spade["U-Net IoU on renders, hard_exudate"] == round(iou, 4)
    unet_json = json.loads((ROOT / "checkpoints" / "unet.json").read_text())["metrics"]
    unet = _metrics(card, "lesion, disc and vessel segmentation (U-Net)")
    assert unet["validation F1 (pooled), haemorrhage"] == round(unet_json["val_f1_pooled_haemorrhage"], 4)
    if "downstream" not in report:  # a report without that stage: the card claims nothing about it
        assert not any(r["task"]["name"].startswith("downstream") for r in card["model-index"][0]["results"])
        return
    summary = report["downstream"]["summary"]
    generated = summary.get("generated", summary.get("acgan-spade"))
    real_only = generated["hard_exudate"]["0"]["pooled"]["f1"]["mean"]
    downstream = _metrics(card, "downstream U-Net trained on real + synthetic pairs")
    assert downstream["hard_exudate F1 (pooled, mean of seeds), real only"] == round(real_only, 4)
