"""The MODEL_CARD.md text of a trained radiograph-lesion bundle, rendered from its configs (metadata.json and inference.json, merged).

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
    if "datalist" in fit:
        fitted = f"the {fit['images']} images of the {fit['split']} list of datalist {fit['datalist']!r}"
        held_out = (f"the {held['images']} images of its {held['split']} list (median {held['distance_median']}, "
                    f"maximum {held['distance_max']})")
    else:
        fitted = (f"the {fit['images']} images of training patients {fit['patients'][0]}-{fit['patients'][1] - 1} "
                  f"(cohort seed {fit['seed']})")
        held_out = (f"{held['images']} held-out images (patients {held['patients'][0]}-{held['patients'][1] - 1} of "
                    "the same seed: the validation split, then patients training never generated; median "
                    f"{held['distance_median']}, maximum {held['distance_max']})")
    return f"""
### Out-of-distribution check (configs/inference.json "ood", {o['file']})
Every image that passes those checks is scored before detection: the Mahalanobis distance of its features (the
{o['features']}) to the training images' mean, under their Ledoit-Wolf shrunk covariance (shrinkage
{o['shrinkage']}), fitted on {fitted}. Threshold **{o['threshold']}**: the {o['quantile'] * 100:g}th percentile of
the distances of {held_out}. An image above it is left out as "out-of-distribution" and gets no finding: by
construction about {100 - o['quantile'] * 100:.1f} % of images like the held-out ones are. Made with:

    {o['command']}
"""


def _figure(e: dict[str, Any]) -> str:
    """An estimate as the bundle metadata holds it (``Estimate.to_json``): value with its interval, or "undefined"."""
    if e.get("value") is None:
        return "undefined"
    low, high = e.get("ci_low"), e.get("ci_high")
    interval = f"{low:.3f} to {high:.3f}" if low is not None and high is not None else "undefined"
    return f"{e['value']:.3f} ({100 * e.get('confidence', 0.95):g}% CI {interval})"


def _metrics(config: dict[str, Any]) -> str:
    """Validation figures with their intervals; figures stored without one are not repeated here."""
    metrics = config.get("metrics", {})
    det, cls = metrics.get("detection", {}), metrics.get("classification", {})
    if not isinstance(det.get("recall"), dict):
        return ("Its metadata keeps point figures from the training run's validation split, without confidence "
                "intervals, so they are not repeated here. Figures with intervals: `dicom-ai-node evaluate` on a "
                "test datalist.\n")
    split = metrics["split"]
    lines = [f"On the datalist's validation list ({split['val_patients']} patients, {split['val_images']} images, "
             f"{split['val_lesions']} lesions); {metrics['ci']}:",
             f"- Detection at threshold {det['threshold']} (match IoU >= {det['match_iou']}): recall "
             f"{_figure(det['recall'])}, precision {_figure(det['precision'])}."]
    if "all_inputs" in cls:
        for name, words in (("all_inputs", "with the inputs it was trained on"),
                            ("image_only", "with labs and notes withheld (image only)")):
            lines.append(f"- Classification on ground-truth boxes {words}: accuracy {_figure(cls[name]['accuracy'])}, "
                         f"macro AUC {_figure(cls[name]['macro_auc'])}.")
    else:
        lines.append(f"- Classification: not estimated here ({cls.get('not_estimated', 'see evaluate')}).")
    lines.append("The validation list also chose the detection threshold, so the detection figures are optimistic; "
                 "the figures to quote come from `dicom-ai-node evaluate` on a test list.")
    return "\n".join(lines) + "\n"


def _evaluation(config: dict[str, Any]) -> str:
    """The figures ``dicom-ai-node evaluate --record`` stored, each with its 95% CI, or how to make them."""
    stored = config.get("metrics", {}).get("evaluation")
    if not stored:
        return ("Not recorded for this bundle: run `dicom-ai-node evaluate BUNDLE --datalist FILE --out DIR --record` "
                "on a held-out list to put its figures, with their intervals, here.\n")
    rows = "\n".join(f"| {name} | {value} |" for name, value in stored["rows"])
    return f"""`{stored['command']}` on the {stored['split']!r} list of datalist {stored['datalist']!r}: \
{stored['n_patients']} patients, {stored['n_images']} images, {stored['n_lesions']} lesions, none of them seen in \
training or threshold choice. Intervals: percentile, {stored['n_resamples']} patient-level bootstrap resamples \
(seed {stored['seed']}); DeLong's test with patients as clusters. "image" etc. are this model with the other inputs \
withheld at inference; "oracle" is the generator's true class probabilities (the best possible), where the data \
have them.{_as_trained(config, stored)} The full report (per-class figures, plots) is what the command writes.

| figure | value |
|---|---|
{rows}
"""


def _as_trained(config: dict[str, Any], stored: dict[str, Any]) -> str:
    names = stored.get("as_trained") or []
    if not names:
        return ""
    training = config.get("training", {})
    return (f' "... (as trained)" rows ({", ".join(names)}): bundles whose fusion head was trained with only those '
            f"inputs, on this bundle's detector and data (`dicom-ai-node train {training.get('base', 'radiograph-lesion')}"
            f" --datalist DATALIST --detector-from THIS_BUNDLE --inputs image,labs ...`, same seed and epochs); "
            "they are not shipped, and `--ablation NAME=DIR` adds them to the evaluation.")


def _training(config: dict[str, Any]) -> str:
    training = config["training"]
    if "datalist" not in training:  # bundles trained on the in-memory synthetic cohort (0.2.0 and before)
        return (f"The project's synthetic cohort (`devtools/synthetic/cohort.py`, seed {training['seed']}, "
                f"{training['n_patients']} patients, one CR image each; 80/20 patient split), "
                f"{training['epochs_detector']} detector and {training['epochs_classifier']} classifier epochs, on "
                f"{training['device']} (torch {training['torch']}, MONAI {training['monai']}).\n")
    inputs = ",".join(training["inputs"])
    command = (f"dicom-ai-node train {training['base']} --datalist DATALIST --out OUT "
               f"--name {config['name']} --version {config['version']} --fusion {training['strategy']} "
               f"--lab-encoding {training['lab_encoding']} --inputs {inputs} "
               f"--epochs-detector {training['epochs_detector']} --epochs-classifier {training['epochs_classifier']} "
               f"--seed {training['seed']} --device {training['device']}")
    described = f" ({training['datalist_description']})" if training.get("datalist_description") else ""
    kept = (f" The fusion head kept is that of epoch {training['classifier_epoch_kept']} of "
            f"{training['epochs_classifier']}, the one with the lowest validation log loss."
            if "classifier_epoch_kept" in training else "")
    reused = (f" Stage 1 is reused as it is from {training['detector_from']} (`--detector-from`)."
              if training.get("detector_from") else "")
    return f"""Datalist {training['datalist']!r}{described}: its "training" list trained \
{'the fusion head' if reused else 'both stages'}, its "validation" list chose the detection threshold.{kept}{reused} \
Made with

    {command}

on {training['device']} (AMP: {training['amp']}; torch {training['torch']}, MONAI {training['monai']}, Python
{training['python']}); seconds {json.dumps(training['seconds'])}. The per-epoch log is `train/metrics.jsonl` beside
the bundle where it was trained.
"""


def model_card(config: dict[str, Any]) -> str:
    """Markdown model card: intended use, what it is, training data and command, validation figures, limits."""
    fusion = config["fusion"]
    strategy = fusion.get("strategy", "early")
    lab_encoding = fusion.get("lab_encoding", "vector")
    inputs = fusion.get("inputs", ["image", "labs", "notes"])
    how = {"early": "embeddings and missing flags concatenated -> MLP",
           "joint": "FiLM: the clinical embedding scales and shifts the image embedding -> MLP",
           "late": "one head per modality, logits mixed by learned weights over the modalities present"}[strategy]
    labs = ("ln-value z-scores + a missing flag per LOINC" if lab_encoding == "vector" else
            'rendered as sentences ("ALP elevated: 410 U/L, reference 40-130") and encoded by all-MiniLM-L6-v2 '
            "(+ missing flag)")
    classes = "\n".join(
        f"- `{c['label']}` -> ({c['value']}, {c['scheme_designator']}, \"{c['meaning']}\")" for c in config["classes"]
    )
    return f"""# {config['name']} {config['version']}

## Intended use
Demonstration, research and automated tests of the DICOM AI node only. **NOT for clinical use**. A bundle trained
on the project's synthetic cohort has never seen a real patient's image, lab value or note, and its outputs mean
nothing about real lesions; one trained on a site's datalist is a research model until validated like any device.
{_images_it_is_for(config)}{_ood_check(config)}
## What it is
Two stages mirroring the bone-tumour design (detector on radiographs, then image + blood biomarkers + text fused
into benign / intermediate / malignant):
1. MONAI RetinaNet (2D, small ResNet {config['detector']['block_inplanes']} with an FPN of
   {config['detector']['fpn_channels']} channels) on a {config['input_size']}x{config['input_size']} input;
   fixed detection threshold {config['detection_threshold']} chosen on the validation split (best F1).
2. Per-lesion fusion head ({strategy} fusion: {how}) over a {fusion['crop_size']}x{fusion['crop_size']} crop ->
   small MONAI ResNet embedding; labs (LOINC {', '.join(fusion['lab_loincs'])}) {labs}; note -> frozen
   all-MiniLM-L6-v2 embedding (+ missing flag); softmax over {len(config['classes'])} classes. Trained with
   inputs: {', '.join(inputs)}; a missing input is masked and flagged, never imputed, and each finding lists the
   inputs it used and those that were missing.

Classes:
{classes}

## Training data
{_training(config)}
## Evaluation on held-out data
{_evaluation(config)}
## Validation figures
{_metrics(config)}
## Limitations
- Trained on synthetic phantoms unless the datalist above is a site's own: real radiographs are then left out by the
  out-of-distribution check, and a finding on a real image it let through would mean nothing.
- In the synthetic cohort, labs and notes are generated from the same label as the image, so the fusion gain is
  built in, not discovered.
- Weights are stored as float16; the figures above were computed with the float16-rounded weights.
- Lab values in a unit other than the requirement's are treated as missing, never converted.
"""
