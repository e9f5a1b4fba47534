"""`fundus-studio evaluate` (training.report), the copy-paste baseline and the render-stage protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_studio import cli, labels
from fundus_studio.checkpoint import save_model
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import DatasetError
from fundus_studio.models.unet import UNET_PRESETS, UNet, UNetConfig
from fundus_studio.phantom import write_phantoms
from tests.tiny_checkpoints import write_tiny_checkpoints
from training import copy_paste, evaluate_labels, harness, report, report_text
from training.evaluate_renders import segmentation_fidelity

SIZE = 64
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("report-data") / "real", count=30, grade=None, size=SIZE, seed=5,
                          progress=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny untrained models; the U-Net also predicts disc and vessels and records its training side."""
    folder = write_tiny_checkpoints(tmp_path_factory.mktemp("report-ck"))
    torch.manual_seed(0)
    classes = (labels.OPTIC_DISC, labels.VESSEL, *labels.LESIONS)
    unet = UNet(UNetConfig(**{**UNET_PRESETS["smoke"].__dict__, "classes": classes}))
    save_model(unet.eval(), folder / "unet", data={"resolution": SIZE}, step=0, created_by="tests/test_report.py")
    return folder


# --- copy-paste -----------------------------------------------------------------------------------


def test_paste_lesions_copies_donor_lesions_inside_the_target_fov_only() -> None:
    target = np.full((4, 4), labels.RETINA, np.uint8)
    target[:, 0] = labels.OUTSIDE
    photo = np.zeros((4, 4, 3), np.uint8)
    d1 = np.full((4, 4), labels.RETINA, np.uint8)
    d1[0, :] = labels.HARD_EXUDATE  # the row crosses the target's outside column
    d1[3, 3] = labels.VESSEL  # not a lesion: stays the target's
    d2 = np.full((4, 4), labels.RETINA, np.uint8)
    d2[0, 2] = labels.HAEMORRHAGE  # pasted after d1, so it wins
    out_photo, out = copy_paste.paste_lesions(photo=photo, label=target, donors=[
        (np.full((4, 4, 3), 10, np.uint8), d1), (np.full((4, 4, 3), 20, np.uint8), d2)])
    assert out[0].tolist() == [labels.OUTSIDE, labels.HARD_EXUDATE, labels.HAEMORRHAGE, labels.HARD_EXUDATE]
    assert out[3, 3] == labels.RETINA and (out[1:] == target[1:]).all()
    assert out_photo[0, :, 0].tolist() == [0, 10, 20, 10] and (out_photo[1:] == 0).all()
    assert (target[0] != labels.HARD_EXUDATE).all(), "the target must not be modified in place"


def test_copy_paste_dataset_uses_same_grade_donors_resumes_and_refuses_another_run(phantoms: Path,
                                                                                    tmp_path: Path) -> None:
    cfg = copy_paste.CopyPasteConfig(real=phantoms, out=tmp_path / "cp", count=10, donors=2, seed=3)
    out = copy_paste.make_dataset(cfg, progress=False)
    real, made = StudioDataset.open(phantoms), StudioDataset.open(out)
    assert len(made) == 10 and made.size == real.size
    assert [s.grade for s in made] == [i % labels.NUM_GRADES for i in range(10)]
    grade_of = {s.id: s.grade for s in real}
    for s in made:
        target, donors = s.extra["target"], s.extra["donors"].split()
        assert len(donors) == 2 and target not in donors
        assert {grade_of[i] for i in (target, *donors)} == {s.grade}
        photo, label = copy_paste.paste_lesions(photo=real.image(target), label=real.label(target),
                                                donors=[(real.image(d), real.label(d)) for d in donors])
        assert (made.label(s) == label).all() and (made.image(s) == photo).all()
    # Re-running resumes without rewriting; another seed into the same folder is refused.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    copy_paste.make_dataset(cfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    with pytest.raises(DatasetError, match="another copy-paste run"):
        copy_paste.make_dataset(copy_paste.CopyPasteConfig(real=phantoms, out=out, count=10, seed=4), progress=False)


# --- pieces of the report -------------------------------------------------------------------------


def test_split_real_is_stratified_disjoint_and_seeded(phantoms: Path) -> None:
    ds = StudioDataset.open(phantoms)
    train, test = report.split_real(ds, count=10, test_count=0, seed=1)
    assert sorted(s.grade for s in train) == sorted(list(range(labels.NUM_GRADES)) * 2)
    assert not {s.id for s in train} & {s.id for s in test} and len(train) + len(test) == len(ds)
    again, _ = report.split_real(ds, count=10, test_count=0, seed=1)
    other, _ = report.split_real(ds, count=10, test_count=0, seed=2)
    assert [s.id for s in again] == [s.id for s in train] != [s.id for s in other]
    assert len(report.split_real(ds, count=10, test_count=7, seed=1)[1]) == 7
    with pytest.raises(DatasetError, match="lower --real-train"):
        report.split_real(ds, count=len(ds), test_count=0, seed=1)


def test_control_pairs_are_neither_training_nor_test_pairs(phantoms: Path, tmp_path: Path) -> None:
    ds = StudioDataset.open(phantoms)
    train, test = report.split_real(ds, count=10, test_count=12, seed=1)
    extra = report.unused_real(ds, taken=train + test, count=100, seed=1)
    assert len(extra) == len(ds) - 22 and not {s.id for s in extra} & {s.id for s in train + test}
    assert [s.id for s in report.unused_real(ds, taken=train + test, count=3, seed=1)] == [s.id for s in extra[:3]]
    # 10 real pairs, 2 held out: a 75 % share needs 24 synthetic pairs; 8 are left.
    cfg = report.ReportConfig(checkpoints=tmp_path, data=phantoms, out=tmp_path / "r", real_train=10, test_count=12,
                              pool=30, fractions=(0.0, 0.75), paper_fractions=())
    with pytest.raises(DatasetError, match="lower --test-count or leave them out of --sources"):
        report.control_pools(cfg, ds, taken=train + test, studio=None, needs={"more-real"},  # type: ignore[arg-type]
                             data=tmp_path / "data")
    assert report.control_pools(cfg, ds, taken=train + test, studio=None, needs={"generated"},  # type: ignore[arg-type]
                                data=tmp_path / "data") == {}


class _Bright(torch.nn.Module):
    """A 'U-Net' that marks every bright pixel as optic disc and as hard exudate."""

    config = UNetConfig(**{**UNET_PRESETS["smoke"].__dict__, "classes": (labels.OPTIC_DISC, labels.HARD_EXUDATE)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.mean(1, keepdim=True) > 0.2).float() * 20 - 10).repeat(1, 2, 1, 1)


def test_segmentation_fidelity_scores_renders_like_the_photos_they_equal(phantoms: Path) -> None:
    pairs = harness.load_pairs(phantoms, resolution=SIZE)
    perfect = pairs.images.numpy()  # renders identical to the photos
    same = segmentation_fidelity(_Bright(), pairs, renders=perfect, batch=4)  # type: ignore[arg-type]
    assert same["real"]["pooled"]["iou"] == same["render"]["pooled"]["iou"]
    assert set(same["real"]["pooled"]["iou"]) == {"optic_disc", "hard_exudate"}
    assert same["real"]["counts"]["tp"]["optic_disc"] > 0
    grey = segmentation_fidelity(_Bright(), pairs, renders=np.full_like(perfect, 128), batch=4)  # type: ignore[arg-type]
    assert grey["real"]["pooled"]["iou"] == same["real"]["pooled"]["iou"]
    assert grey["render"]["counts"]["tp"] == {"optic_disc": 0, "hard_exudate": 0}  # grey 128 is not bright


def _stats(mean: float, sd: float) -> dict[str, float]:
    return {"mean": mean, "sd": sd}


def _made() -> dict:
    iou = {"optic_disc": 0.8, "vessel": 0.5, "haemorrhage": 0.6, "hard_exudate": 0.7}
    return {"labels": {"grade_fidelity": {"generated": {"accuracy": 0.78, "kappa": 0.69},
                                          "heldout_real": {"accuracy": 0.96, "kappa": 0.99}}},
            "renders": {"segmenter_classes": list(iou),
                        "segmentation": {"real": {"pooled": {"iou": iou}},
                                         "render": {"pooled": {"iou": {**iou, "vessel": 0.39, "optic_disc": 0.75}}}}},
            "downstream": {"generator": "flow", "summary": {"generated": {"hard_exudate": {
                "0": {"pooled": {"f1": _stats(0.40, 0.02), "recall": _stats(0.9, 0.01)}},
                "0.25": {"pooled": {"f1": _stats(0.43, 0.04), "recall": _stats(0.9, 0.01)}}}}}}}


def _met(made: dict) -> dict[str, bool | None]:
    return {t["key"]: t["met"] for t in report_text.targets(made, classes=("hard_exudate",))}


def test_targets_compare_ratios_and_the_downstream_gain_with_one_sd() -> None:
    made = _made()
    assert _met(made) == {"grade_accuracy": True, "grade_kappa": False, "iou_optic_disc": True, "iou_vessel": False,
                          "iou_haemorrhage": True, "iou_hard_exudate": True, "iou_microaneurysm": None,
                          "iou_neovascularisation": None, "iou_irma": None,  # the segmenter has no such class
                          "own_style_flat": None,
                          "own_style_texture": None, "real_colour": None,  # a render stage that predates them
                          "downstream_hard_exudate": False,  # 0.78/0.96 = 0.81; disc 0.75/0.8 ≥ 0.9; gain 0.03 < sd 0.04
                          "downstream_vs_copy_paste_hard_exudate": None, "recall_hard_exudate": None}  # not run
    made["downstream"]["summary"]["generated"]["hard_exudate"]["0.25"]["pooled"]["f1"] = _stats(0.45, 0.04)
    assert _met(made)["downstream_hard_exudate"] is True


def _share_stats(f1: float, recall: float) -> dict:
    return {"pooled": {"f1": _stats(f1, 0.02), "recall": _stats(recall, 0.01), "precision": _stats(0.5, 0.1)},
            "per_image": {"f1": _stats(f1, 0.05), "recall": _stats(recall, 0.02), "precision": _stats(0.5, 0.1)},
            "threshold": _stats(0.8, 0.05), "sizes": [[40, 13]]}


def test_issue_13_targets_compare_with_copy_paste_and_keep_recall_at_75() -> None:
    made = _made()
    gen = made["downstream"]["summary"]["generated"]["hard_exudate"]
    gen["0.75"] = _share_stats(0.5, 0.84)  # recall 0.84 < 0.9 − 0.05: collapsed
    made["downstream"]["summary"]["copy-paste"] = {"hard_exudate": {"0.25": _share_stats(0.43, 0.9)}}
    met = _met(made)
    assert met["downstream_vs_copy_paste_hard_exudate"] is True  # 0.43 vs 0.43: not below
    assert met["recall_hard_exudate"] is False
    gen["0.75"]["pooled"]["recall"] = _stats(0.851, 0.01)
    made["downstream"]["summary"]["copy-paste"]["hard_exudate"]["0.25"]["pooled"]["f1"] = _stats(0.44, 0.01)
    met = _met(made)
    assert met["recall_hard_exudate"] is True and met["downstream_vs_copy_paste_hard_exudate"] is False
    row = next(t for t in report_text.targets(made, classes=("hard_exudate",))
               if t["key"] == "downstream_vs_copy_paste_hard_exudate")
    assert "flow prior + SPADE" in row["target"] and row["measured"] == "0.430 vs 0.440"


def test_downstream_section_gives_the_papers_table_shape_and_its_counting() -> None:
    summary = {"generated": {"hard_exudate": {"0": _share_stats(0.4, 0.9), "0.25": _share_stats(0.45, 0.9)}},
               "copy-paste": {"hard_exudate": {"0.25": _share_stats(0.44, 0.9)}},
               "combined": {"hard_exudate": {"0.25": _share_stats(0.46, 0.9)}}}
    paper = {"generated": {"hard_exudate": {"0.25": {**_share_stats(0.3, 0.7), "sizes": [[40, 182]]}}}}
    r = {"real_train": 50, "test": 200, "pool": 200, "generator": "acgan", "summary": summary, "paper_summary": paper,
         "paper_real": 54, "run_config": {"preset": "small-cpu", "steps": None, "val_fraction": 0.2}}
    text = "\n".join(report_text.downstream_section(r, data="d", donors=2, seeds=5, classes=("hard_exudate",),
                                                    fractions=(0.0, 0.25)))
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and " % |" in line]
    assert rows == ["real only", "ACGAN + SPADE", "copy-paste", "ACGAN + SPADE + copy-paste (half each)",
                    "real only", "ACGAN + SPADE (paper's count)"]
    assert "| ACGAN + SPADE (paper's count) | 25 % | 40 + 182 | 0.300 ± 0.020 |" in text
    assert "precision (per image) | recall (per image) | threshold |" in text and "0.800 ± 0.050" in text
    assert "Counted as the paper counts" in text and "246 / 54 ≈ 4.6" in text


def _summary(mean: float, median: float | None = None) -> dict[str, float]:
    return {"mean": mean, "sd": 0.1, "median": mean if median is None else median, "count": 3}


def test_style_targets_compare_own_style_with_flat_colour_and_real_photos_with_their_seeded_render() -> None:
    made = _made()
    made["renders"]["own_style"] = {"count": 3, "side": 512, "blur_px": 2.0, "l1": _summary(3.0),
                                    "flat_l1": _summary(6.0), "ssim": _summary(0.95), "flat_ssim": _summary(0.9),
                                    "texture_ratio": _summary(1.2), "colour_distance": _summary(2.0)}
    photo = {"size": 512, "own": {"colour_distance": 5.0, "texture_ratio": 1.1},
             "seeded": {"colour_distance": 11.0, "texture_ratio": 0.2}}
    made["renders"]["real_photos"] = {"a": photo, "b": {**photo, "own": {"colour_distance": 6.0, "texture_ratio": 0.5}}}
    met = _met(made)
    assert met["own_style_flat"] is True and met["own_style_texture"] is True
    assert met["real_colour:a"] is True and met["real_texture:a"] is True
    assert met["real_colour:b"] is False and met["real_texture:b"] is False  # 6 > 11 / 2; 0.5 < 0.6
    made["renders"]["own_style"]["ssim"] = _summary(0.85)  # L1 lower but SSIM not higher
    made["renders"]["own_style"]["texture_ratio"] = _summary(1.2, median=1.7)
    met = _met(made)
    assert met["own_style_flat"] is False and met["own_style_texture"] is False
    lines = "\n".join(report_text.style_section(made["renders"]))
    assert "| a | 512 | the photo's own | 5.00 | 1.10 |" in lines and "own_style.png" in lines


def test_render_stage_style_parts_on_tiny_checkpoints(checkpoints: Path, phantoms: Path, tmp_path: Path) -> None:
    from fundus_studio.studio import Studio

    cfg = report.ReportConfig(checkpoints=checkpoints, data=phantoms, out=tmp_path, style_count=2)
    studio = Studio.from_checkpoints(checkpoints)
    ids = [s.id for s in StudioDataset.open(phantoms).samples[3:6]]
    own = report.own_style_part(cfg, studio, ids=ids)
    assert own["count"] == 2 and own["ids"] == ids[:2] and own["side"] == SIZE
    assert own["l1"]["count"] == 2 and own["flat_l1"]["mean"] > 0 and own["colour_distance"]["mean"] >= 0
    photos = report.real_photo_part(cfg, studio)
    (name, r), = photos.items()
    assert "retina" in name and r["size"] == SIZE and r["classes"]["retina"] > 0
    assert r["own"]["colour_distance"] < r["seeded"]["colour_distance"]  # even an untrained renderer follows
    for figure in ("own_style", "real_photos"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:8] == PNG


def test_targets_say_not_measured_instead_of_passing_or_vanishing() -> None:
    made = _made()
    del made["labels"]["grade_fidelity"]["heldout_real"]  # no real maps unseen by the classifier
    made["renders"]["segmenter_classes"].remove("vessel")  # a segmenter without vessels
    made["renders"]["segmentation"]["real"]["pooled"]["iou"]["haemorrhage"] = 0.0  # ratio undefined
    made["downstream"]["summary"]["generated"]["hard_exudate"]["0"]["pooled"]["f1"] = _stats(0.40, None)  # 1 seed
    met = _met(made)
    assert met["grade_accuracy"] is None and met["iou_vessel"] is None and met["iou_haemorrhage"] is None
    assert met["downstream_hard_exudate"] is None and met["iou_optic_disc"] is True
    del made["downstream"]["summary"]["generated"]["hard_exudate"]["0.25"]  # share not run
    assert _met(made)["downstream_hard_exudate"] is None
    table = report_text.targets_table(report_text.targets(made, classes=("hard_exudate",)))
    assert "not measured (the segmenter does not predict vessel)" in table and "nan" not in table


def test_label_tables_print_undefined_figures_as_a_dash() -> None:
    """A grade without real maps has undefined real statistics (None once the report went through JSON)."""
    classes = {labels.NAMES[k]: {"generated_fraction": 0.01, "generated_components": 2.0, "real_fraction": None,
                                 "real_components": None, "w1_fraction": None} for k in labels.LESIONS}
    result = {"grade_fidelity": {"generated": {"accuracy": 0.5, "kappa": None, "count": 10}}, "chance_accuracy": 0.2,
              "per_grade": {"0": {"lesion_fraction_generated": 0.01, "lesion_fraction_real": None,
                                  "diversity_generated": 0.1, "diversity_real": None, "classes": classes}}}
    text = evaluate_labels.markdown(result)
    assert "| 0 | 0.0100 | – | 0.100 | – |" in text and "| generated | 0.500 | – | 10 |" in text


# --- the whole command ----------------------------------------------------------------------------


def _args(checkpoints: Path, data: Path, out: Path, *, per_grade: int = 3) -> list[str]:
    return ["evaluate", "--checkpoints", str(checkpoints), "--data", str(data), "--out", str(out),
            "--per-grade", str(per_grade), "--render-count", "5", "--real-train", "10", "--test-count", "12",
            "--pool", "12",
            "--synthetic-size", str(SIZE), "--fractions", "0,0.25", "--seeds", "2", "--unet-preset", "smoke",
            "--unet-steps", "2", "--threads", "1", "--jobs", "1", "--paper-real", "200"]


@pytest.mark.slow  # about 40 s: samples, renders and ten smoke U-Net trainings
def test_evaluate_writes_the_report_and_resumes(checkpoints: Path, phantoms: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert cli.main(_args(checkpoints, phantoms, out)) == 0
    md = (out / "REPORT.md").read_text()
    for heading in ("## Targets", "## 1. Label maps", "## 2. Renders", "## 3. Downstream", "### hard_exudate",
                    "### haemorrhage", "### Counted as the paper counts", "#### hard_exudate"):
        assert heading in md
    assert "Measured on procedural phantoms" in md
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and " % |" in line]
    gen = "flow prior + SPADE"  # the folder's default generator
    main = ["real only", gen, "copy-paste", f"{gen} + copy-paste (half each)", "control: unused real maps + SPADE",
            "control: unused real pairs"]
    assert rows == [*main, *main, *(["real only", f"{gen} (paper's count)"] * 2)]
    # The controls: the 8 pairs of 30 that are neither the 10 training nor the 12 test pairs.
    more = StudioDataset.open(out / "data" / "more-real")
    used = {s.id for name in ("real-train", "test") for s in StudioDataset.open(out / "data" / name).samples}
    assert len(more) == 8 and not {s.id for s in more.samples} & used
    rendered = StudioDataset.open(out / "data" / "real-maps-spade")
    assert [s.id for s in rendered.samples] == [s.id for s in more.samples]
    assert all(np.array_equal(rendered.label(s.id), more.label(s.id)) for s in more.samples)
    assert not np.array_equal(rendered.image(0), more.image(0))  # rendered, not copied
    for name in ("lesions", "samples", "render_iou", "downstream", "own_style", "real_photos"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG
    data = json.loads((out / "report.json").read_text())
    assert data["labels"]["grade_fidelity"]["generated"]["count"] == 3 * labels.NUM_GRADES
    assert data["renders"]["count"] == 5 and data["downstream"]["real_train"] == 10
    assert data["downstream"]["test"] == 12 and data["downstream"]["generator"] == "flow"
    assert {t["key"] for t in data["targets"]} == {
        "grade_accuracy", "grade_kappa", "plausible_disc", "vessel_share", "connectivity", "vessel_width",
        "lesion_share_2", "lesion_share_3", "lesion_share_4", "lesion_free_0", "diversity", "memorisation",
        "iou_optic_disc", "iou_vessel", "iou_haemorrhage", "iou_hard_exudate", "iou_microaneurysm",
        "iou_neovascularisation", "iou_irma",
        *(f"{k}_{c}" for k in ("downstream", "downstream_vs_copy_paste", "recall")
          for c in ("hard_exudate", "haemorrhage")),
        "own_style_flat", "own_style_texture", "real_colour:skimage.data.retina (CC0)",
        "real_texture:skimage.data.retina (CC0)"}
    assert data["renders"]["own_style"]["count"] == 5  # style_count (30) capped by the render stage's 5 pairs
    assert data["labels"]["generator"] == "flow" and set(data["labels"]["others"]) == {"acgan"}  # both measured
    assert data["labels"]["upsampler"] is not None and data["labels"]["others"]["acgan"]["upsampler"] is None
    assert data["labels"]["size"] == 64  # generated at the real maps' side
    # The tiny classifier records no training data, so no real maps count as unseen: said, not dropped.
    assert next(t for t in data["targets"] if t["key"] == "grade_accuracy")["met"] is None
    runs = {str(p.relative_to(out / "downstream")) for p in (out / "downstream").glob("*/runs/*")}
    assert runs == {"generated/runs/f0-s0", "generated/runs/f0-s1", *(f"{s}/runs/f0.25-s{i}" for i in (0, 1) for s in (
        "generated", "copy-paste", "combined", "real-maps", "more-real", "paper-generated"))}
    assert StudioDataset.open(out / "data" / "flow-spade").info["meta"]["source"] == "flow+spade"
    # 10 real, 2 held out per run: 8 train; 25 %: 3 synthetic (combined: 2 + 1); the paper's count: 8 · 246 / 200.
    unets = {p.parent.parent.parent.name: json.loads((p.parent / "unet.json").read_text())["data"]
             for p in (out / "downstream").glob("*/runs/f0.25-s0/eval.json")}
    assert {k: (d["n_real"], d["n_synthetic"], d["n_val"]) for k, d in unets.items()} == {
        "generated": (8, 3, 2), "copy-paste": (8, 3, 2), "combined": (8, 3, 2), "real-maps": (8, 3, 2),
        "more-real": (8, 3, 2), "paper-generated": (8, 10, 2)}
    assert len(unets["combined"]["synthetic"]) == 2 and unets["paper-generated"]["share_counting"] == "paper"
    assert set(unets["generated"]["thresholds"]) == {"hard_exudate", "haemorrhage"}

    # Re-running reuses every finished stage and run; other settings into the same folder are refused.
    stamps = {p: p.stat().st_mtime_ns for p in [out / "labels.json", out / "renders.json",
                                                *out.glob("downstream/*/runs/*/eval.json")]}
    assert cli.main(_args(checkpoints, phantoms, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # Sources are not pinned: a re-run with fewer of them reuses the runs it has.
    assert cli.main([*_args(checkpoints, phantoms, out), "--sources", "generated,copy-paste"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # One stage alone re-runs (from its cache) and the report keeps the others' sections.
    assert cli.main([*_args(checkpoints, phantoms, out), "--stages", "renders"]) == 0
    assert "## 1. Label maps" in (out / "REPORT.md").read_text() and "## 3. Downstream" in (out / "REPORT.md").read_text()
    capsys.readouterr()
    assert cli.main(_args(checkpoints, phantoms, out, per_grade=4)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fundus-studio evaluate: error:") and "per_grade" in err and len(err.splitlines()) == 1
    # Without its config.json (a `git rm` leaves the untracked pools and runs) nothing is reused.
    (out / "config.json").unlink()
    assert cli.main(_args(checkpoints, phantoms, out)) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "delete the folder" in err and len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_evaluate_names_a_missing_checkpoint_before_any_work(checkpoints: Path, phantoms: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "ck"
    partial.mkdir()
    for f in checkpoints.iterdir():
        if not f.name.startswith("spade"):
            (partial / f.name).write_bytes(f.read_bytes())
    assert cli.main(_args(partial, phantoms, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "spade.safetensors" in err and "make checkpoints" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_evaluate_names_a_corrupt_checkpoint_in_one_line(checkpoints: Path, phantoms: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "ck"
    broken.mkdir()
    for f in checkpoints.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "grade_classifier.safetensors").write_bytes(b"not a safetensors file")
    assert cli.main(_args(broken, phantoms, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "grade_classifier.safetensors" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--stages", "labels,nonsense"], "stages must be some of"),
    (["--fractions", "0.25,0.5"], "fractions must include 0"),
    (["--pool", "5"], "needs 8 synthetic pairs; raise pool"),  # 50 % of the 8 real left after validation
    (["--paper-real", "54"], "(paper counting) of 8 real training pairs needs 36 synthetic pairs"),
    (["--sources", "generated,gan"], "sources must be some of"),
    (["--generator", "nonsense"], "generator must be one of"),
    (["--paper-fractions", "0.3"], "paper_fractions must be some of the paper's rows"),
    (["--val-fraction", "0.01"], "val_fraction must hold out at least one"),
    (["--test-count", "-3"], "test_count must be ≥ 0"),
])
def test_evaluate_rejects_bad_settings_before_any_work(checkpoints: Path, phantoms: Path, tmp_path: Path,
                                                       extra: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(checkpoints, phantoms, tmp_path / "o")
    args[args.index("--fractions") + 1] = "0,0.5"
    with pytest.raises(SystemExit):
        cli.main([*args, *extra])
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_render_stage_draws_at_the_renderers_side_and_resizes_like_the_photos(
        checkpoints: Path, phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renderer trained at 64² judged by a segmenter of 32²: each map is drawn at 64² and the render
    area-resized to 32², the path the photo took; the record says so."""
    import shutil

    from fundus_studio.checkpoint import load_model
    from fundus_studio.models.spade import SpadeGenerator
    from fundus_studio.studio import Studio

    folder = tmp_path / "ck"
    shutil.copytree(checkpoints, folder)
    spade = load_model(folder / "spade.safetensors", expected=SpadeGenerator)
    save_model(spade, folder / "spade", data={"resolution": SIZE, "downsample": "nearest"}, step=0,
               created_by="tests/test_report.py")
    judge = load_model(folder / "unet.safetensors", expected=UNet)
    save_model(judge, folder / "unet", data={"resolution": SIZE // 2}, step=0, created_by="tests/test_report.py")
    seen: dict[str, np.ndarray] = {}

    def capture(unet: UNet, pairs: harness.Pairs, *, renders: np.ndarray) -> dict:
        seen["renders"], seen["maps"] = renders, pairs.maps.numpy()
        return segmentation_fidelity(unet, pairs, renders=renders)

    monkeypatch.setattr(report.evaluate_renders, "segmentation_fidelity", capture)
    cfg = report.ReportConfig(checkpoints=folder, data=phantoms, out=tmp_path / "out", render_count=3, style_count=1)
    cfg.out.mkdir()
    studio = Studio.from_checkpoints(folder)
    result = report.render_stage(cfg, studio, segmenter=folder / "unet.safetensors",
                                 unet_model=load_model(folder / "unet.safetensors", expected=UNet))
    assert (result["resolution"], result["spade_resolution"], result["spade_downsample"]) == (SIZE // 2, SIZE, "nearest")
    assert seen["renders"].shape == (3, SIZE // 2, SIZE // 2, 3) and seen["maps"].shape == (3, SIZE // 2, SIZE // 2)
    full = harness.load_pairs(phantoms, resolution=SIZE, downsample="nearest")
    first = full.ids.index(result["ids"][0])
    drawn = studio.model("spade").render(full.maps[first].numpy(), seed=cfg.seed)
    np.testing.assert_array_equal(seen["renders"][0], harness.resize_photo(drawn, SIZE // 2))
    assert f"at its training side, {SIZE}²" in report_text.render_section(result)[2]
    # The downstream stage's generated pairs are drawn at the renderer's side unless told otherwise.
    assert report.synthetic_side(cfg, studio) == SIZE
    assert report.synthetic_side(report.ReportConfig(checkpoints=folder, data=phantoms, out=cfg.out,
                                                     synthetic_size=SIZE // 2), studio) == SIZE // 2
