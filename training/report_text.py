"""The quality report's judgement and words (``training.report``): the project's targets checked
against the measured figures, and REPORT.md.

Every target the report's stages address gets a row, measured or not: a figure that could not be
measured (a class the segmenter lacks, one seed, a share not run) is said to be so, with ``met``
None, rather than left out.
"""

from __future__ import annotations

from typing import Any

from fundus_studio import labels
from training import evaluate_labels
from training.evaluate_segmentation import number

GENERATOR_LABELS: dict[str, str] = {"acgan": "ACGAN", "flow": "flow prior"}  # studio.GENERATORS, as tables name them
# The project's targets (issue 6): generated/real grade accuracy, kappa, render/real IoU on these classes,
# and the downstream gain of this synthetic share over real-only, in standard deviations across seeds.
ACCURACY_RATIO_TARGET = 0.8
KAPPA_TARGET = 0.8
# Label-map anatomy (issue 11): generated against real, at 512².
DISC_RATE_TARGET = 0.95  # maps with one optic disc of plausible size
VESSEL_SHARE_RANGE = (0.7, 1.3)  # median vessel share, generated / real
CONNECTIVITY_RATIO_TARGET = 0.85  # median tree connectivity, generated / real (at least)
WIDTH_RATIO_TARGET = 1.3  # median vessel width, generated / real (at most)
LESION_SHARE_RANGE = (0.67, 1.5)  # mean lesion share per grade, generated / real
LESION_SHARE_GRADES = (2, 3, 4)
LESION_FREE_TARGET = 0.95  # grade-0 maps without any lesion pixel
DIVERSITY_RATIO_TARGET = 0.7  # within-grade diversity, generated / real, every grade
MEMORISATION_RATIO_TARGET = 0.8  # median nearest-training-map distance, generated / held-out real
# Render / real-photo IoU of the segmenter, per class (issue 12): large structures must come out as
# recognisable as in photos; the smallest lesions, which a 256² render draws in a pixel or two, less so.
IOU_RATIO_TARGETS: dict[int, float] = {
    labels.OPTIC_DISC: 0.9, labels.VESSEL: 0.9, labels.HAEMORRHAGE: 0.9, labels.HARD_EXUDATE: 0.85,
    labels.MICROANEURYSM: 0.6, labels.NEOVASCULARISATION: 0.5, labels.IRMA: 0.5,
}
DOWNSTREAM_TARGET_FRACTION = 0.25
# Issue 13: at that share generated data is not below copy-paste, and recall at this share stays within
# RECALL_DROP_LIMIT of real-only's (the paper's weakness: 0.469 → 0.399 at 75 %).
RECALL_TARGET_FRACTION = 0.75
RECALL_DROP_LIMIT = 0.05
# A real photo's style (issue 12): own-style colour distance at most this share of the seeded style's
# and under the bound; background texture of renders within this range of the photos'.
COLOUR_SHARE_TARGET = 0.5
COLOUR_DISTANCE_TARGET = 12.0
TEXTURE_RANGE = (0.6, 1.6)


def source_labels(generator: str) -> dict[str, str]:
    """The downstream sources (``training.report.DOWNSTREAM_SOURCES``) as the tables name them."""
    gen = f"{GENERATOR_LABELS.get(generator, generator)} + SPADE"
    return {"generated": gen, "copy-paste": "copy-paste", "combined": f"{gen} + copy-paste (half each)",
            "real-maps": "control: unused real maps + SPADE", "more-real": "control: unused real pairs"}


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


# --- targets --------------------------------------------------------------------------------------


def _target(key: str, *, what: str, measured: str, wanted: str, met: bool | None) -> dict[str, Any]:
    return {"key": key, "target": what, "measured": measured, "wanted": wanted, "met": met}


def label_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    gen = result["grade_fidelity"]["generated"]
    real = result["grade_fidelity"].get("heldout_real")
    ratio = _ratio(gen["accuracy"], real["accuracy"]) if real else None
    measured = (f"{number(gen['accuracy'])} / {number(real['accuracy'])} = {number(ratio, 2)}" if real
                else f"{number(gen['accuracy'])}; no real maps unseen by the classifier to compare with")
    out = [
        _target("grade_accuracy", what="grade accuracy on generated maps / on real maps", measured=measured,
                wanted=f"≥ {ACCURACY_RATIO_TARGET}", met=None if ratio is None else ratio >= ACCURACY_RATIO_TARGET),
        _target("grade_kappa", what="quadratic-weighted kappa on generated maps", measured=number(gen["kappa"]),
                wanted=f"≥ {KAPPA_TARGET}", met=None if gen["kappa"] is None else gen["kappa"] >= KAPPA_TARGET),
    ]
    return out + anatomy_targets(result) if "anatomy" in result else out


def _ratio_target(key: str, *, what: str, gen: float | None, real: float | None, low: float | None,
                  high: float | None, digits: int = 3) -> dict[str, Any]:
    ratio = _ratio(gen, real)
    wanted = (f"{low}–{high} ×" if low is not None and high is not None
              else f"≥ {low} ×" if low is not None else f"≤ {high} ×")
    met = None if ratio is None else (low is None or ratio >= low) and (high is None or ratio <= high)
    return _target(key, what=what, measured=f"{number(gen, digits)} / {number(real, digits)} = {number(ratio, 2)}",
                   wanted=wanted, met=met)


def anatomy_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets on the anatomy, lesions, diversity and memorisation of generated maps."""
    gen, real = result["anatomy"]["generated"], result["anatomy"]["real"]
    rate = gen["plausible_disc_rate"]
    out = [
        _target("plausible_disc", what="maps with one optic disc of plausible size (real: "
                f"{number(real['plausible_disc_rate'], 2)})", measured=number(rate, 3),
                wanted=f"≥ {DISC_RATE_TARGET}", met=None if rate is None else rate >= DISC_RATE_TARGET),
        _ratio_target("vessel_share", what="vessel share of the FOV (median), generated / real",
                      gen=gen["vessel_share"], real=real["vessel_share"], low=VESSEL_SHARE_RANGE[0],
                      high=VESSEL_SHARE_RANGE[1]),
        _ratio_target("connectivity", what="tree connectivity (median), generated / real", gen=gen["connectivity"],
                      real=real["connectivity"], low=CONNECTIVITY_RATIO_TARGET, high=None),
        _ratio_target("vessel_width", what="mean vessel width in px (median), generated / real",
                      gen=gen["vessel_width"], real=real["vessel_width"], low=None, high=WIDTH_RATIO_TARGET, digits=2),
    ]
    per_grade = result["per_grade"]
    for g in LESION_SHARE_GRADES:
        a = per_grade[str(g)]["anatomy"]
        out.append(_ratio_target(f"lesion_share_{g}", what=f"lesion share of the FOV, grade {g}, generated / real",
                                 gen=a["generated"]["lesion_share"], real=(a["real"] or {}).get("lesion_share"),
                                 low=LESION_SHARE_RANGE[0], high=LESION_SHARE_RANGE[1], digits=4))
    free = per_grade["0"]["anatomy"]["generated"]["lesion_free_rate"]
    out.append(_target("lesion_free_0", what="grade-0 maps without lesions", measured=number(free, 3),
                       wanted=f"≥ {LESION_FREE_TARGET}", met=None if free is None else free >= LESION_FREE_TARGET))
    ratios = [_ratio(per_grade[str(g)]["anatomy"]["diversity_generated"],
                     per_grade[str(g)]["anatomy"]["diversity_real"]) for g in range(labels.NUM_GRADES)]
    out.append(_target("diversity", what="within-grade diversity, generated / real, grades 0–4",
                       measured=" / ".join(number(r, 2) for r in ratios), wanted=f"each ≥ {DIVERSITY_RATIO_TARGET}",
                       met=None if None in ratios else min(ratios) >= DIVERSITY_RATIO_TARGET))
    mem = result.get("memorisation")
    what = "median distance to the nearest training map, generated / held-out real"
    if mem is None:
        out.append(_target("memorisation", what=what, measured="not measured (the generator's training maps are "
                           "not at hand)", wanted=f"≥ {MEMORISATION_RATIO_TARGET} ×", met=None))
    else:
        out.append(_ratio_target("memorisation", what=what, gen=mem["generated_median"], real=mem["real_median"],
                                 low=MEMORISATION_RATIO_TARGET, high=None, digits=4))
    return out


def style_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets on own-style renders: held-out pairs against painting each class the photo's
    mean colour, and real photos' colour distance and background texture. Said not measured when the
    stage predates them."""
    low, high = TEXTURE_RANGE
    own = result.get("own_style")
    what_flat = ("held-out pairs in their own photo's style, after a 2-px blur: L1 and SSIM against painting each "
                 "class the photo's mean colour")
    what_tex = "held-out pairs in their own photo's style: background texture, render / photo (median)"
    if own is None:
        out = [_target(k, what=w, measured="not measured (the render stage predates it)", wanted=x, met=None)
               for k, w, x in (("own_style_flat", what_flat, "L1 lower and SSIM higher"),
                               ("own_style_texture", what_tex, f"{low}–{high} ×"))]
    else:
        l1, fl1, ssim, fssim = (own[k]["mean"] for k in ("l1", "flat_l1", "ssim", "flat_ssim"))
        met = None if None in (l1, fl1, ssim, fssim) else l1 < fl1 and ssim > fssim
        tex = own["texture_ratio"]["median"]
        out = [_target("own_style_flat", what=f"{what_flat} ({own['count']} at {own['side']}²)",
                       measured=f"L1 {number(l1, 2)} vs {number(fl1, 2)}; SSIM {number(ssim)} vs {number(fssim)}",
                       wanted="L1 lower and SSIM higher", met=met),
               _target("own_style_texture", what=what_tex, measured=number(tex, 2), wanted=f"{low}–{high} ×",
                       met=None if tex is None else low <= tex <= high)]
    photos = result.get("real_photos")
    if not photos:
        return out + [_target("real_colour", what="real photos in their own style: colour distance",
                              measured="not measured (the render stage predates it)",
                              wanted=f"≤ {COLOUR_SHARE_TARGET} × seeded and < {COLOUR_DISTANCE_TARGET:g}", met=None)]
    for name, r in photos.items():
        own_d, seeded_d = r["own"]["colour_distance"], r["seeded"]["colour_distance"]
        out.append(_target(f"real_colour:{name}",
                           what=f"{name} in its own style: CIELAB colour distance, own vs seeded style",
                           measured=f"{number(own_d, 1)} vs {number(seeded_d, 1)}",
                           wanted=f"≤ {COLOUR_SHARE_TARGET} × seeded and < {COLOUR_DISTANCE_TARGET:g}",
                           met=own_d <= COLOUR_SHARE_TARGET * seeded_d and own_d < COLOUR_DISTANCE_TARGET))
        tex = r["own"]["texture_ratio"]
        out.append(_target(f"real_texture:{name}", what=f"{name} in its own style: background texture, render / photo",
                           measured=number(tex, 2), wanted=f"{low}–{high} ×",
                           met=None if tex is None else low <= tex <= high))
    return out


def render_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for k, target in IOU_RATIO_TARGETS.items():
        name = labels.NAMES[k]
        what = f"{name} IoU on renders / on real photos"
        if name not in result["segmenter_classes"]:
            out.append(_target(f"iou_{name}", what=what, measured=f"not measured (the segmenter does not predict "
                               f"{name})", wanted=f"≥ {target} ×", met=None))
            continue
        real, render = (result["segmentation"][s]["pooled"]["iou"][name] for s in ("real", "render"))
        ratio = _ratio(render, real)
        out.append(_target(f"iou_{name}", what=what, measured=f"{number(render)} / {number(real)} = {number(ratio, 2)}",
                           wanted=f"≥ {target} ×", met=None if ratio is None else ratio >= target))
    return out + style_targets(result)


def _at(summary: dict[str, Any], source: str, name: str, share: float) -> dict[str, Any] | None:
    """The stats of ``source`` at ``share`` for class ``name`` (share 0: the real-only runs, kept with
    the first source run), or None where not run."""
    if share == 0:
        source = next(iter(summary), "")
    return summary.get(source, {}).get(name, {}).get(f"{share:g}")


def downstream_targets(result: dict[str, Any], *, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per class (issue 13): at 25 % the generated source's pooled F1 minus real-only's beats the larger
    of the two sds across seeds, and is not below copy-paste's mean; at 75 % its pooled recall is at
    least real-only's − 0.05. Undefined figures (one seed, a share or source not run) are not measured."""
    summary = result["summary"]
    label = source_labels(result.get("generator", "generated"))["generated"]
    share, high = DOWNSTREAM_TARGET_FRACTION, RECALL_TARGET_FRACTION
    out = []
    for name in classes:
        base, mixed = _at(summary, "generated", name, 0.0), _at(summary, "generated", name, share)
        paste, late = _at(summary, "copy-paste", name, share), _at(summary, "generated", name, high)
        what = f"{name} F1 (pooled): {100 * share:g} % {label} minus real only"
        if base is None or mixed is None:
            out.append(_target(f"downstream_{name}", what=what, measured=f"not measured (no {share:g} or 0 share run)",
                               wanted="> one sd across seeds", met=None))
        else:
            b, m = base["pooled"]["f1"], mixed["pooled"]["f1"]
            if None in (b["mean"], m["mean"], b["sd"], m["sd"]):
                out.append(_target(f"downstream_{name}", what=what,
                                   measured=f"{number(m['mean'])} − {number(b['mean'])}; undefined spread (needs ≥ 2 "
                                   "seeds and defined F1)", wanted="> one sd across seeds", met=None))
            else:
                sd, gain = max(b["sd"], m["sd"]), m["mean"] - b["mean"]
                out.append(_target(f"downstream_{name}", what=what, measured=f"{m['mean']:.3f} − {b['mean']:.3f} = "
                                   f"{gain:+.3f} (larger sd {sd:.3f})", wanted="> one sd across seeds", met=gain > sd))
        what = f"{name} F1 (pooled) at {100 * share:g} %: {label} against copy-paste"
        g_f1, p_f1 = (None if x is None else x["pooled"]["f1"]["mean"] for x in (mixed, paste))
        out.append(_target(f"downstream_vs_copy_paste_{name}", what=what,
                           measured=(f"{number(g_f1)} vs {number(p_f1)}" if None not in (g_f1, p_f1) else
                                     "not measured (a source or the share not run, or F1 undefined)"),
                           wanted="not below copy-paste (mean over seeds)",
                           met=None if g_f1 is None or p_f1 is None else g_f1 >= p_f1))
        what = f"{name} recall (pooled) at {100 * high:g} % {label} against real only"
        r_base, r_late = (None if x is None else x["pooled"]["recall"]["mean"] for x in (base, late))
        out.append(_target(f"recall_{name}", what=what,
                           measured=(f"{number(r_late)} vs {number(r_base)}" if None not in (r_base, r_late) else
                                     "not measured (a share not run, or recall undefined)"),
                           wanted=f"≥ real only − {RECALL_DROP_LIMIT:g}",
                           met=None if r_base is None or r_late is None else r_late >= r_base - RECALL_DROP_LIMIT))
    return out


def targets(report: dict[str, Any], *, classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The project's targets for the stages run so far."""
    out = []
    if "labels" in report:
        out += label_targets(report["labels"])
    if "renders" in report:
        out += render_targets(report["renders"])
    if "downstream" in report:
        out += downstream_targets(report["downstream"], classes=classes)
    return out


# --- markdown -------------------------------------------------------------------------------------


def _ms(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    return number(stats["mean"]) if stats["sd"] is None else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def targets_table(rows: list[dict[str, Any]]) -> str:
    mark = {True: "met", False: "**missed**", None: "not measured"}
    lines = ["| target | measured | wanted | |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['wanted']} | {mark[t['met']]} |" for t in rows]
    return "\n".join(lines)


def anatomy_table(r: dict[str, Any]) -> list[str]:
    """Per grade: the anatomy of generated and real maps (medians; lesion share a mean)."""
    lines = ["| grade | plausible disc gen/real | vessel share gen/real | connectivity gen/real | vessel width px "
             "gen/real | lesion share gen/real | lesion-free gen/real | diversity gen/real |", "|---|---|---|---|---|---|---|---|"]
    for g, v in r["per_grade"].items():
        a = v["anatomy"]
        gen, real = a["generated"], a["real"] or {}
        cells = [f"{number(gen[k], d)}/{number(real.get(k), d)}" for k, d in
                 (("plausible_disc_rate", 2), ("vessel_share", 3), ("connectivity", 2), ("vessel_width", 2),
                  ("lesion_share", 4), ("lesion_free_rate", 2))]
        cells.append(f"{number(a['diversity_generated'], 3)}/{number(a['diversity_real'], 3)}")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def generators_table(r: dict[str, Any]) -> list[str]:
    """The default generator beside the others, on the headline figures."""
    rows = {r.get("generator", "default"): r, **r.get("others", {})}
    lines = ["| generator | grade acc. | kappa | plausible disc | vessel share | connectivity | vessel width | "
             "lesion share g2/g3/g4 | diversity g0–g4 | memorisation |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in rows.items():
        gen = x["anatomy"]["generated"]
        fid = x["grade_fidelity"]["generated"]
        les = "/".join(number(x["per_grade"][str(g)]["anatomy"]["generated"]["lesion_share"], 3)
                       for g in LESION_SHARE_GRADES)
        div = "/".join(number(x["per_grade"][str(g)]["anatomy"]["diversity_generated"], 2)
                       for g in range(labels.NUM_GRADES))
        mem = x.get("memorisation") or {}
        lines.append(f"| {name} | {number(fid['accuracy'])} | {number(fid['kappa'])} | "
                     f"{number(gen['plausible_disc_rate'], 2)} | {number(gen['vessel_share'])} | "
                     f"{number(gen['connectivity'], 2)} | {number(gen['vessel_width'], 2)} | {les} | {div} | "
                     f"{number(mem.get('generated_median'), 4)} |")
    real = r["anatomy"]["real"]
    real_les = "/".join(number((r["per_grade"][str(g)]["anatomy"]["real"] or {}).get("lesion_share"), 3)
                        for g in LESION_SHARE_GRADES)
    real_div = "/".join(number(r["per_grade"][str(g)]["anatomy"]["diversity_real"], 2) for g in range(labels.NUM_GRADES))
    real_acc = r["grade_fidelity"].get("heldout_real", {})
    lines.append(f"| real (held out) | {number(real_acc.get('accuracy'))} | {number(real_acc.get('kappa'))} | "
                 f"{number(real['plausible_disc_rate'], 2)} | {number(real['vessel_share'])} | "
                 f"{number(real['connectivity'], 2)} | {number(real['vessel_width'], 2)} | {real_les} | {real_div} | "
                 f"{number((r.get('memorisation') or {}).get('real_median'), 4)} |")
    return lines


def _vessels(r: dict[str, Any]) -> str:
    if r.get("vessels") == "tree":
        return (" Vessels are drawn as a tree from the sampler's vessel probability "
                "(`fundus_studio/vessel_tree.py`), not by its arg-max.")
    return " Vessels are the arg-max of the sampler's probabilities." if r.get("vessels") == "argmax" else ""


def _without_vessels(r: dict[str, Any]) -> str:
    """The memorisation medians with vessels read as retina, when measured (a diagnostic, not a target)."""
    mem = r.get("memorisation") or {}
    gen, real = mem.get("generated_median_without_vessels"), mem.get("real_median_without_vessels")
    if gen is None or real is None:
        return ""
    return (f"; with vessels read as retina (how many vessel pixels survive at 64² moves the distance), "
            f"{number(gen, 4)} against {number(real, 4)}")


def label_section(r: dict[str, Any]) -> list[str]:
    name = r.get("generator", "the generator")
    lines = [f"## 1. Label maps (default generator: {name})", "",
             (f"{r['maps_per_grade']} generated maps per grade at {r.get('size', r['resolution'])}² against the "
              f"real maps of `{r['data']}`. Grade fidelity is judged by `{r['classifier']}` at {r['resolution']}²."
              + _vessels(r) + " Anatomy (training/anatomy.py): one optic disc of plausible size (equivalent diameter 0.07–0.20 of "
              "the field of view, after closing the gaps vessels cut); vessel share of the field of view; tree "
              "connectivity (share of vessel pixels in the largest component of vessels + disc); mean vessel "
              "width (vessel area / skeleton length); lesion share of the field of view; diversity (share of "
              "pixels two maps of one grade differ on). Memorisation: median share of differing pixels to the "
              "nearest training map at 64², generated maps against held-out real ones" + _without_vessels(r) + "."), ""]
    if "anatomy" in r:
        lines += ["### Generators side by side", "", *generators_table(r), "",
                  f"### Anatomy per grade ({name})", "", *anatomy_table(r), ""]
    return lines + ["### Grade fidelity and lesion statistics (at the classifier's side)", "",
                    ("Lesion pixel fractions are means over maps; W1 is the Wasserstein-1 distance between the "
                     "per-map fractions; – where undefined (a grade without real maps)."), "",
                    evaluate_labels.markdown(r), "",
                    "![lesion statistics per grade](lesions.png)", "", "![generated maps and renders](samples.png)", ""]


def render_section(r: dict[str, Any]) -> list[str]:
    seg = r["segmentation"]
    note = (f" SPADE draws each map at its training side, {r['spade_resolution']}², and the render is resized to "
            f"{r['resolution']}² as the photo was." if r["spade_resolution"] != r["resolution"] else "")
    lines = ["## 2. Renders (SPADE)", "",
             (f"{r['count']} held-out pairs at {r['resolution']}². The U-Net `{r['segmenter']}` (trained on real "
              "photos) segments each real photo and the render of its label map; IoU and F1 are pooled over all "
              f"pixels against the label map (SPADE's mIoU protocol).{note}"), "",
             "| class | IoU real | IoU render | render / real | F1 real | F1 render |", "|---|---|---|---|---|---|"]
    real, render = seg["real"]["pooled"], seg["render"]["pooled"]
    for name in r["segmenter_classes"]:
        lines.append(f"| {name} | {number(real['iou'][name])} | {number(render['iou'][name])} | "
                     f"{number(_ratio(render['iou'][name], real['iou'][name]), 2)} | {number(real['f1'][name])} | "
                     f"{number(render['f1'][name])} |")
    lines += ["", "![IoU on renders and real photos](render_iou.png)", "",
              "Renders against the real photos (L1 in 8-bit units, lower is better; SSIM, higher is better):", "",
              "| style code | L1 | SSIM |", "|---|---|---|"]
    names = {"seeded": "seeded N(0, I)", "photo": "the real photo's own (encoder)",
             "flat": "– (each class painted its mean colour: a reference, not a model)"}
    for mode, m in r["photo"].items():
        lines.append(f"| {names.get(mode, mode)} | {number(m['l1'], 2)} ± {number(m['l1_std'], 2)} | "
                     f"{number(m['ssim'])} ± {number(m['ssim_std'])} |")
    return lines + [""] + style_section(r)


def _mean_sd(stats: dict[str, Any], digits: int) -> str:
    return "–" if stats["mean"] is None else f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def style_section(r: dict[str, Any]) -> list[str]:
    """Own-style renders of held-out pairs and of real photos (absent from a stage that predates them)."""
    lines = []
    own = r.get("own_style")
    if own is not None:
        lines += [f"### In the photo's own style ({own['count']} held-out pairs at {own['side']}²)", "",
                  ("Each label map rendered with its own photo as the style photo (`render(map, style=photo)`: the "
                   "photo's statistics come from its preprocessed image and extracted map, as for any photo). "
                   f"Pixel metrics after a {own['blur_px']:g}-px Gaussian blur inside the field of view (no label map "
                   "fixes a texture's phase); the reference paints each class the photo's own mean colour. Colour "
                   "distance: ΔE*76 of the mean CIELAB colours plus the norm of the per-channel sd differences, "
                   "inside the field of view. Background texture: robust band-pass energy of the green channel away "
                   "from vessels, disc and lesions, render / photo (`training/evaluate_renders.py`). Mean ± sd over "
                   "pairs."), "",
                  "| | L1 ↓ | SSIM ↑ | colour distance ↓ | texture render / photo (median) |", "|---|---|---|---|---|",
                  f"| render, the photo's own style | {_mean_sd(own['l1'], 2)} | {_mean_sd(own['ssim'], 3)} | "
                  f"{_mean_sd(own['colour_distance'], 2)} | {number(own['texture_ratio']['median'], 2)} |",
                  f"| each class the photo's mean colour | {_mean_sd(own['flat_l1'], 2)} | "
                  f"{_mean_sd(own['flat_ssim'], 3)} | | |", "", "![own-style renders](own_style.png)", ""]
    photos = r.get("real_photos")
    if photos:
        lines += ["### Real photos", "",
                  ("Each photo preprocessed by the one path, its map extracted (field of view, disc, vessels: "
                   "`fundus-studio extract`), rendered in the photo's own style and in a seeded style; both compared "
                   "with the photo inside its field of view."), "",
                  "| photo | side | style | colour distance ↓ | texture render / photo |", "|---|---|---|---|---|"]
        for name, x in photos.items():
            for mode, label in (("own", "the photo's own"), ("seeded", "seeded")):
                lines.append(f"| {name} | {x['size']} | {label} | {number(x[mode]['colour_distance'], 2)} | "
                             f"{number(x[mode]['texture_ratio'], 2)} |")
        lines += ["", "![real photos and their renders](real_photos.png)", ""]
    return lines


def downstream_rows(summary: dict[str, Any], *, name: str, fractions: tuple[float, ...], labels_: dict[str, str],
                    base: dict[str, Any] | None = None) -> list[tuple[str, float, dict[str, Any]]]:
    """(source label, share, stats) rows: the real-only runs once (from ``base``, else the first
    source of ``summary``), then each source per share."""
    first = base if base is not None else summary
    rows = [("real only", 0.0, first[next(iter(first))][name]["0"])]
    for f in fractions:
        if f > 0:
            rows += [(labels_[s], f, summary[s][name][f"{f:g}"]) for s in summary if f"{f:g}" in summary[s][name]]
    return rows


DOWNSTREAM_HEAD = ("| training data | synthetic share | real + synthetic | F1 (pooled) | precision (pooled) | "
                   "recall (pooled) | F1 (per image) | precision (per image) | recall (per image) | threshold |")


def _downstream_row(label: str, share: float, stats: dict[str, Any]) -> str:
    p, q = stats["pooled"], stats["per_image"]
    sizes = ", ".join(f"{a} + {b}" for a, b in stats.get("sizes", [])) or "–"
    cells = [label, f"{100 * share:g} %", sizes, *(_ms(p[m]) for m in ("f1", "precision", "recall")),
             *(_ms(q[m]) for m in ("f1", "precision", "recall")), _ms(stats.get("threshold", {"mean": None}))]
    return "| " + " | ".join(cells) + " |"


def downstream_section(r: dict[str, Any], *, data: str, donors: int, seeds: int, classes: tuple[str, ...],
                       fractions: tuple[float, ...]) -> list[str]:
    run = r["run_config"] or {}
    names = source_labels(r.get("generator", "generated"))
    lines = ["## 3. Downstream: U-Net with real + synthetic training data", "",
             (f"{r['real_train']} real pairs (stratified by grade) and {r['test']} test pairs from `{data}`; "
              f"synthetic pools of {r['pool']} pairs each: {names['generated']} samples, and the copy-paste "
              f"baseline (lesions of {donors} same-grade real training pairs pasted onto a real one); "
              "\"+ copy-paste\" rows take half their synthetic pairs from each pool. Two controls, where run, take "
              "their pairs from the real pairs that are neither training nor test pairs: the \"unused real maps + "
              "SPADE\" rows render those pairs' label maps (a perfect generator, our renderer), the \"unused real "
              "pairs\" rows add them as they are (what any extra data of the kind can give). One U-Net per run segments "
              f"{', '.join(classes)} (one sigmoid each). Every U-Net: preset `{run.get('preset')}`, "
              f"{run.get('steps') or 'the preset’s'} steps, {seeds} seeds; mean ± sample sd over seeds. Each run "
              f"holds out {run.get('val_fraction', 0):g} of the real pairs (by grade, seeded; real images only) and "
              "thresholds each class where F1 pooled over that split peaks (`threshold` column; 0.5 where the split "
              "holds too few lesions); the test set chooses nothing. The synthetic share is of the training set "
              "(25 % = one synthetic pair per three real); `real + synthetic` gives the training counts."), ""]
    for name in classes:
        lines += [f"### {name}", "", DOWNSTREAM_HEAD, "|" + "---|" * 10]
        for label, f, stats in downstream_rows(r["summary"], name=name, fractions=fractions, labels_=names):
            lines.append(_downstream_row(label, f, stats))
        lines += [""]
    lines += ["![downstream F1](downstream.png)", ""]
    paper = r.get("paper_summary") or {}
    if paper:
        lines += ["### Counted as the paper counts", "",
                  ("Son et al.'s 25 / 50 / 75 % rows added 246 / 738 / 2214 synthetic images. Those are "
                   "738 · f / (1 − f): the share of a training set of 738 real units, while IDRiD, the paper's "
                   f"real data, holds {r.get('paper_real')} training images with hard-exudate masks. Read against "
                   f"{r.get('paper_real')} real images, a row adds 246 / {r.get('paper_real')} ≈ "
                   f"{246 / max(1, r.get('paper_real') or 1):.1f} synthetic pairs per real one (25 %), 13.7 (50 %), "
                   "41 (75 %); here the same ratios to our real training pairs, with the generated source "
                   "(docs/segmentation.md, \"Counting the share\"). Real only: the runs of the table above."), ""]
        for name in classes:
            lines += [f"#### {name}", "", DOWNSTREAM_HEAD, "|" + "---|" * 10]
            for label, f, stats in downstream_rows(paper, name=name, fractions=tuple(sorted({0.0, *(
                    float(x) for s in paper.values() for x in s[name])})), labels_=names, base=r["summary"]):
                lines.append(_downstream_row(f"{label} (paper's count)" if f else label, f, stats))
            lines += [""]
    return lines


def markdown(report: dict[str, Any], *, checkpoints: str, data: str, donors: int, seeds: int,
             classes: tuple[str, ...], fractions: tuple[float, ...]) -> str:
    hashes = ", ".join(f"{k} `{v}`" for k, v in report["settings"]["checkpoint_hashes"].items())
    info = report["data"]
    lines = ["# Fundus Studio quality report", "",
             (f"Checkpoints `{checkpoints}` ({hashes}); held-out real data `{data}` ({info['created_by']}, "
              f"{info['count']} pairs at {info['size']}²)."), ""]
    if info["created_by"] == "fundus-studio phantom":
        lines += ["**Measured on procedural phantoms, not on photographs of eyes.**", ""]
    lines += ["## Targets", "", targets_table(report["targets"]), ""]
    if "labels" in report:
        lines += label_section(report["labels"])
    if "renders" in report:
        lines += render_section(report["renders"])
    if "downstream" in report:
        lines += downstream_section(report["downstream"], data=data, donors=donors, seeds=seeds, classes=classes,
                                    fractions=fractions)
    lines += ["---", f"Made by `fundus-studio evaluate`; this run: `{report['command']}`."]
    return "\n".join(lines) + "\n"
