"""The model card (docs/README.md) of a chest-ct-nodule bundle, from its merged config. Every figure it states is
the training run's validation figure with its interval; the held-out evaluation is written by ``evaluate --record``.
"""

from __future__ import annotations

from typing import Any, Mapping


def _figure(value: Mapping[str, Any] | None) -> str:
    """``0.812 (95% CI 0.701-0.903, n=...)`` from an Estimate's JSON; a figure without an interval is not shown."""
    if not value or value.get("ci_low") is None or value.get("ci_high") is None or value.get("value") is None:
        return "not estimated"
    return f"{value['value']:.3f} (95% CI {value['ci_low']:.3f}-{value['ci_high']:.3f})"


def model_card(config: Mapping[str, Any]) -> str:
    det, fusion, training = config["detector"], config["fusion"], config.get("training", {})
    metrics = config.get("metrics", {})
    detection = metrics.get("detection", {})
    classes = "\n".join(f"| {c['label']} | {c['value']} | {c['scheme_designator']} | {c['meaning']} |"
                        for c in config["classes"])
    labs = ", ".join(fusion["lab_loincs"])
    lines = [
        f"# {config['name']} {config['version']}",
        "",
        "Demonstration model of the DICOM AI node, trained on synthetic chest CT phantoms. **NOT for clinical use.**",
        "",
        "## What it does",
        "",
        f"Stage 1: MONAI RetinaNet (3D, ResNet + FPN, configuration \"{det['configuration']}\") finds lung nodules on "
        f"the CT volume resampled to {' x '.join(f'{v:g}' for v in det['spacing_mm'])} mm (anti-aliased), HU "
        f"{det['intensity_hu'][0]:g}..{det['intensity_hu'][1]:g}. Boxes at or above the operating threshold "
        f"{config['detection_threshold']:.3f} (best F1 on the validation list) are reported.",
        "",
        f"Stage 2: per nodule, a {fusion['crop_size']}^3-voxel cube at the box centre through a small 3D MONAI "
        f"ResNet, fused ({fusion['strategy']}) with the tumour markers (LOINC {labs}, ng/mL, ln z-scores with "
        "missing flags), age and sex (each with a missing flag) and a sentence embedding of the notes "
        "(all-MiniLM-L6-v2). Missing inputs are masked and flagged, never imputed.",
        "",
        "## Classes (ICD-O-3 morphology, coding scheme ICDO3)",
        "",
        "| label | code | scheme | meaning |",
        "|---|---|---|---|",
        classes,
        "",
        "IAC (invasive adenocarcinoma) is coded by the NOS adenocarcinoma morphology 8140/3: ICD-O-3.2 has no "
        "separate code for invasive non-mucinous adenocarcinoma of the lung.",
        "",
        "## Intended images",
        "",
        "Axial CT of the chest (Body Part Examined CHEST, LUNG, THORAX or empty), original primary series of at least "
        "16 regularly spaced slices without gantry tilt; the series is chosen as the bundle's `series_selection` "
        "declares (thinnest slices, then most instances). Other series and images are left out with the reason.",
        "",
        "Out-of-distribution check: a volume without lung fields is not analysed (reason out-of-distribution, "
        "in the SR). The share of air-density area enclosed by the body, on the model's 2 mm grid, must be at "
        "least 0.10 (pipelines/chest_ct_nodule/lungs.py): synthetic chest phantoms measure 0.23-0.24, a real "
        "head CT (pydicom-data, stacked to a series) 0.03. It is a gate for what is not chest CT at all, not a "
        "check that a chest CT looks like the training data.",
        "",
        "## Training",
        "",
        "The shipped bundle was made with the synthetic chest CT cohort (devtools/synthetic/README.md; 160 patients, "
        "seed 0, split 0.6/0.2/0.2, rendered on a 176 x 176 x 140 grid of 2 mm slices: "
        "`write_chest_ct_cohort(OUT, 160, 0, grid=Grid(176, 140, 2.0))`) and `dicom-ai-node train chest-ct-nodule "
        "--datalist OUT/datalist.json --out DIR --epochs-detector 28` with the epochs below. Its held-out figures "
        "come from full-size 512 x 512 studies (below).",
        "",
        f"Datalist: {training.get('datalist', 'unknown')} ({training.get('datalist_description', '')}). "
        f"Seed {training.get('seed')}, {training.get('epochs_detector')} detector epochs (epoch "
        f"{training.get('detector_epoch_kept')} kept, best validation F1), {training.get('epochs_classifier')} "
        f"classifier epochs (epoch {training.get('classifier_epoch_kept')} kept, lowest validation log loss), device "
        f"{training.get('device')}, {training.get('seconds', {}).get('total')} s. Split: "
        f"{metrics.get('split', {})}.",
        "",
        "Limitations of the \"cpu-small\" configuration: at 2 mm voxels (smoothed by "
        f"{det.get('smoothing_mm', 0):g} mm) nodules below about 8 mm span a few voxels and are mostly missed; large "
        "nodules (about 20 mm and more) are what it finds reliably. The \"luna16\" configuration (MONAI's LUNA16 bundle, "
        "0.7 x 0.7 x 1.25 mm) is a GPU model; no bundle of it is trained here.",
        "",
        "## Validation figures (the training run's validation list)",
        "",
        f"{metrics.get('ci', '')}. Detection at threshold {detection.get('threshold')}, a hit when each box's centre "
        "lies in the other box:",
        "",
        f"- sensitivity: {_figure(detection.get('sensitivity'))}",
        f"- precision: {_figure(detection.get('precision'))}",
        f"- false positives per volume: {_figure(detection.get('false_positives_per_volume'))}",
    ]
    classification = metrics.get("classification", {})
    for name in ("all_inputs", "image_only"):
        if name in classification:
            c = classification[name]
            lines.append(f"- classification on the true boxes, {name.replace('_', ' ')}: accuracy "
                         f"{_figure(c.get('accuracy'))}, macro AUC {_figure(c.get('macro_auc'))}")
    lines += ["", "## Held-out evaluation", "", *_evaluation(config.get("metrics", {}).get("evaluation")), ""]
    return "\n".join(lines)


def _evaluation(stored: Mapping[str, Any] | None) -> list[str]:
    """The figures ``dicom-ai-node evaluate --record`` stored, each with its 95% CI, or how to make them."""
    if not stored:
        return ["Not recorded for this version: `dicom-ai-node evaluate chest-ct-nodule --datalist FILE --out DIR "
                "--record` on a held-out list puts its figures (FROC, CPM, macro AUC, with intervals) here."]
    return [
        f"`{stored['command']}` on the {stored['split']!r} list of datalist {stored['datalist']!r}: "
        f"{stored['n_patients']} patients, {stored['n_images']} {stored.get('unit', 'scan')}s, "
        f"{stored['n_lesions']} nodules, none seen in training or threshold choice. Intervals: percentile, "
        f"{stored['n_resamples']} patient-level bootstrap resamples (seed {stored['seed']}); DeLong's test with "
        "patients as clusters. Detection: every candidate of the detector; a hit is LUNA16's rule (a candidate's "
        "centre within the nodule's radius); CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false "
        "positives per scan. Classification on the true nodule boxes; \"image\" etc. are this model with the other "
        "inputs withheld at inference; \"oracle\" is the generator's true class probabilities (the ceiling).",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in stored["rows"]),
    ]
