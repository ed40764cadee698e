"""The model card (docs/README.md) of a trained radiograph-lesion bundle, rendered from its merged config.

Kept apart from the training loop so the card's wording can be read and reviewed on its own.
"""

from __future__ import annotations

import json
from typing import Any


def _images_it_is_for(config: dict[str, Any]) -> str:
    """The bundle's "intended_use" section in words: the pipeline leaves out every image outside it."""
    use = config.get("intended_use")
    if not use:
        return ""
    why = use.get("why", {})
    low, high = use["pixel_spacing_mm"]
    rows = [
        ("Modality", ", ".join(use["modalities"]), why.get("modalities", "")),
        ("Body Part Examined (absent: allowed)", ", ".join(use["body_parts"]), why.get("body_parts", "")),
        ("View Position (absent: allowed)", ", ".join(use["views"]), why.get("views", "")),
        ("Photometric Interpretation", ", ".join(use["photometric_interpretations"]),
         why.get("photometric_interpretations", "")),
        ("Pixel Spacing, else Imager Pixel Spacing (absent: allowed)", f"{low:g}-{high:g} mm",
         why.get("pixel_spacing_mm", "")),
        ("Rows and Columns", f"{use['min_size']}-{use['max_size']}",
         "; ".join(w for w in (why.get("min_size", ""), why.get("max_size", "")) if w)),
    ]
    table = "\n".join(f"| {name} | {value} | {reason} |" for name, value, reason in rows)
    return f"""
### Images it is made for (configs/metadata.json "intended_images")
The node routes to this model only the instances of these modalities and body parts; the pipeline checks every
attribute below on each image it is given and leaves out, as "outside-intended-use", any image outside them.

| attribute | intended | why |
|---|---|---|
{table}
"""


def _ood_check(config: dict[str, Any]) -> str:
    """The bundle's "ood" section in words: how the out-of-distribution threshold was made."""
    o = config.get("ood")
    if not o:
        return ""
    fit, held = o["fit"], o["held_out"]
    return f"""
### Out-of-distribution check (configs/inference.json "ood", {o['file']})
Every image that passes those checks is scored before detection: the Mahalanobis distance of its features (the
{o['features']}) to the training images' mean, under their Ledoit-Wolf shrunk covariance (shrinkage
{o['shrinkage']}), fitted on the {fit['images']} images of training patients {fit['patients'][0]}-{fit['patients'][1] - 1}
(cohort seed {fit['seed']}). Threshold **{o['threshold']}**: the {o['quantile'] * 100:g}th percentile of the distances
of {held['images']} held-out images (patients {held['patients'][0]}-{held['patients'][1] - 1} of the same seed: the
validation split, then patients training never generated; median {held['distance_median']}, maximum
{held['distance_max']}). An image above it is left out as "out-of-distribution" and gets no finding: by construction
about {100 - o['quantile'] * 100:.1f} % of this generator's images are, and real radiographs are (the README lists
the scores of pydicom-data's). Made with:

    {o['command']}
"""


def _intervals(metrics: dict[str, Any]) -> str:
    """The metrics' 95 % confidence intervals as stored in the bundle ("confidence_intervals"), or why there are none."""
    intervals = metrics.get("confidence_intervals")
    if not intervals:
        return "No confidence intervals: a single split of a synthetic cohort; these numbers only show that the code trains."
    lines = [f"- {name}: {e['value']:.3f} ({100 * e['confidence']:g}% CI {e['ci_low']:.3f} to {e['ci_high']:.3f}, "
             f"{e['k']}/{e['n']})" if "k" in e else
             f"- {name}: {e['value']:.3f} ({100 * e['confidence']:g}% CI {e['ci_low']:.3f} to {e['ci_high']:.3f}, n {e['n']})"
             for name, e in sorted(intervals.items())]
    methods = sorted({e["ci_method"] for e in intervals.values()})
    return "Confidence intervals (" + "; ".join(methods) + "):\n" + "\n".join(lines) + \
        "\n\nA single split of a synthetic cohort: these numbers only show that the code trains."


def model_card(config: dict[str, Any]) -> str:
    """Markdown model card: intended use, data, exact command, metrics on the synthetic validation split, limits."""
    training = config["training"]
    metrics = config["metrics"]
    det, cls = metrics["detection"], metrics["classification"]
    command = (
        f"dicom-ai-node train --out pipelines/bundles/radiograph-lesion --n-patients {training['n_patients']} "
        f"--seed {training['seed']} --epochs-detector {training['epochs_detector']} "
        f"--epochs-classifier {training['epochs_classifier']} --device cpu --threads 2"
    )
    classes = "\n".join(
        f"- `{c['label']}` -> ({c['value']}, {c['scheme_designator']}, \"{c['meaning']}\")" for c in config["classes"]
    )
    return f"""# radiograph-lesion {config['version']}

## Intended use
Demonstration and automated tests of the DICOM AI node only. **NOT for clinical use**: it has never seen a real
patient's image, lab value or note, and its outputs mean nothing about real lesions.
{_images_it_is_for(config)}{_ood_check(config)}
## What it is
Two stages mirroring the bone-tumour design (detector on radiographs, then image + blood biomarkers + text fused
into benign / intermediate / malignant):
1. MONAI RetinaNet (2D, small ResNet {config['detector']['block_inplanes']} with an FPN of
   {config['detector']['fpn_channels']} channels) on a {config['input_size']}x{config['input_size']} input;
   fixed detection threshold {config['detection_threshold']} chosen on the validation split (best F1).
2. Per-lesion fusion head: {config['fusion']['crop_size']}x{config['fusion']['crop_size']} crop -> small MONAI
   ResNet embedding; labs (LOINC {', '.join(config['fusion']['lab_loincs'])}, ln-value z-scores + missing flags);
   note -> frozen all-MiniLM-L6-v2 embedding (+ missing flag); MLP -> softmax over 3 classes.

Classes:
{classes}

## Training data
The project's synthetic cohort (`devtools/synthetic/cohort.py`, seed {training['seed']}, {training['n_patients']} patients,
one CR image each; 80/20 patient split). Trained by `dicom-ai-node train` (which calls
`pipelines.radiograph_lesion.train.train_radiograph_lesion`); this bundle was produced with:

    {command}

(equivalently `python -m pipelines.radiograph_lesion.train pipelines/bundles/radiograph-lesion` with the same options; the same
command on the same machine type reproduces bit-identical weights).

on {training['device']} (torch {training['torch']}, MONAI {training['monai']}, Python {training['python']}).
Seconds: {json.dumps(training['seconds'])}.

## Metrics (synthetic validation split, {metrics['split']['val_patients']} patients, \
{metrics['split']['val_lesions']} lesions)
- Detection at threshold {det['threshold']} (match IoU >= {det['match_iou']}): recall {det['recall']},
  precision {det['precision']}, F1 {det['f1']}, recall at IoU >= 0.5 {det['recall_iou_0_5']},
  false positives per image {det['false_positives_per_image']}.
- Classification on ground-truth boxes: accuracy {cls['accuracy']} with labs and notes;
  {cls['accuracy_image_only']} with labs and notes withheld (image only).
- Per-class recall: {json.dumps(cls['per_class_recall'])}; validation counts:
  {json.dumps(cls['per_class_counts_val'])}.

{_intervals(metrics)}

## Limitations
- Synthetic phantoms: a tube-like bone with painted lesions. Real radiographs (e.g. pydicom-data's RG3_UNCR, a
  tibia) are left out by the out-of-distribution check; a finding on a real image it let through would mean nothing.
- Labs and notes are generated from the same label as the image, so the fusion gain is built in, not discovered.
- Weights are stored as float16; metrics above were computed with the float16-rounded weights.
- Lab units are assumed to be the requirement's units; values in other units are treated as missing.
"""
