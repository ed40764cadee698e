"""``python -m devtools.synthetic.measure``: the per-modality oracle AUCs that the README quotes, with intervals.

Draws patients' truth (no pixels) until ``--n-lesions`` lesions, computes each lesion's oracle from the image latent,
the labs, the note and their combinations, and evaluates them with ``pipelines.evaluation`` (patient-level
bootstrap). Prints a Markdown table. ``--baseline N`` also renders N patients and fits a linear baseline on pixels
(and on pixels + labs + note text), cross-validated by patient: the check that the pixels carry the latent.
"""

from __future__ import annotations

import argparse

import numpy as np

from devtools.synthetic.cohort import LABELS, oracle_probabilities, patient_truth
from pipelines.evaluation import EvaluationConfig, LesionClassification, evaluate

SETS: dict[str, tuple[str, ...]] = {
    "image": ("image",), "labs": ("labs",), "notes": ("notes",), "image+labs": ("image", "labs"),
    "image+notes": ("image", "notes"), "labs+notes": ("labs", "notes"),
}


def oracle_table(seed: int, n_lesions: int, n_resamples: int = 1000) -> str:
    labels: list[int] = []
    patients: list[str] = []
    rows: dict[str, list[np.ndarray]] = {name: [] for name in (*SETS, "all")}
    index = 0
    while len(labels) < n_lesions:
        truth = patient_truth(seed, index)
        n = len(truth.lesion_evidence)
        labels += [LABELS.index(truth.label)] * n
        patients += [truth.demographics.patient_id] * n
        for name, use in SETS.items():
            rows[name].append(oracle_probabilities(truth, use))
        rows["all"].append(oracle_probabilities(truth))
        index += 1
    report = evaluate(
        LesionClassification(LABELS, np.asarray(labels), tuple(patients),
                             {name: np.concatenate(rows[name]) for name in SETS}, np.concatenate(rows["all"])),
        config=EvaluationConfig(n_resamples=n_resamples, seed=seed),
    )
    out = [f"seed {seed}: {report.n_lesions} lesions of {report.n_patients} patients (first {index} patients; "
           f"{n_resamples} patient-level bootstrap resamples)", "",
           "| oracle using | macro AUC (95% CI) | " + " | ".join(f"AUC {c} vs rest" for c in LABELS) + " |",
           "|---|---|" + "---|" * len(LABELS)]
    assert report.oracle is not None
    for metrics in (*report.models, report.oracle):
        name = "image+labs+notes" if metrics.name == "oracle" else metrics.name
        out.append(f"| {name} | {metrics.macro_auc.text()} | "
                   + " | ".join(metrics.auc[c].text() for c in LABELS) + " |")
    return "\n".join(out)


def _lesion_rows(seed: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, list[str],
                                                      np.ndarray, np.ndarray]:
    """Per lesion: 32x32 standardised crop of the displayed image, class, patient, lab features, note, oracles."""
    from devtools.synthetic.cohort import generate_case
    from devtools.synthetic.cohort_io import case_datasets
    from devtools.synthetic.evidence import LAB_MODELS
    from pipelines.common import imaging

    crops, labels, patients, labs, notes, oracle_image, oracle_all = [], [], [], [], [], [], []
    for index in range(n_patients):
        case = generate_case(seed, index)
        image_rows, all_rows = oracle_probabilities(case, ("image",)), oracle_probabilities(case)
        k = 0
        for ds, image in zip(case_datasets(case), case.images):
            native = imaging.normalise(ds)
            for box in image.boxes:
                crop = imaging.crop(native, box, 32)
                crops.append(((crop - crop.mean()) / (crop.std() + 1e-6)).ravel())
                labels.append(LABELS.index(case.label))
                patients.append(case.demographics.patient_id)
                labs.append([float(np.log(case.labs[lab.loinc])) if lab.loinc in case.labs else np.nan
                             for lab in LAB_MODELS])
                notes.append(case.note or "")
                oracle_image.append(image_rows[k])
                oracle_all.append(all_rows[k])
                k += 1
    return (np.asarray(crops), np.asarray(labels), patients, np.asarray(labs), notes, np.asarray(oracle_image),
            np.asarray(oracle_all))


def baseline_table(seed: int, n_patients: int, n_resamples: int = 1000) -> str:
    """Logistic regression on PCA(40) of the crops, and on those plus labs (standardised ln values, missing flags)
    and TF-IDF of the note, 5-fold cross-validated by patient; beside the oracles of the same lesions."""
    from sklearn.decomposition import PCA
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    crops, labels, patients, labs, notes, oracle_image, oracle_all = _lesion_rows(seed, n_patients)
    missing = np.isnan(labs)
    present_mean = np.nanmean(labs, axis=0)
    present_sd = np.nanstd(labs, axis=0)
    lab_features = np.hstack([np.where(missing, 0.0, (labs - present_mean) / present_sd), missing])
    image_only, fused = np.zeros((len(labels), 3)), np.zeros((len(labels), 3))
    for train, test in GroupKFold(5).split(crops, labels, patients):
        pca = make_pipeline(StandardScaler(), PCA(40, random_state=0)).fit(crops[train])
        pixels = pca.transform(crops)
        pixels /= pixels[train].std(axis=0)
        model = LogisticRegression(C=0.1, max_iter=4000).fit(pixels[train], labels[train])
        image_only[test] = model.predict_proba(pixels[test])
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit([notes[i] for i in train])
        text = 3 * tfidf.transform(notes).toarray()
        features = np.hstack([pixels, lab_features, text, np.asarray([[not n] for n in notes], dtype=float)])
        model = LogisticRegression(C=0.1, max_iter=4000).fit(features[train], labels[train])
        fused[test] = model.predict_proba(features[test])
    report = evaluate(
        LesionClassification(LABELS, labels, tuple(patients),
                             {"baseline image": image_only, "baseline image+labs+notes": fused,
                              "oracle image": oracle_image}, oracle_all),
        config=EvaluationConfig(n_resamples=n_resamples, seed=seed),
    )
    out = [f"seed {seed}: {report.n_lesions} lesions of {report.n_patients} patients (first {n_patients} patients; "
           f"5-fold cross-validation by patient; {n_resamples} patient-level bootstrap resamples)", "",
           "| predictions | macro AUC (95% CI) |", "|---|---|"]
    assert report.oracle is not None
    for metrics in (*report.models, report.oracle):
        name = "oracle image+labs+notes" if metrics.name == "oracle" else metrics.name
        out.append(f"| {name} | {metrics.macro_auc.text()} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-lesions", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=0, metavar="N_PATIENTS",
                        help="also render N patients and fit the pixel baseline (about 0.25 s a patient)")
    args = parser.parse_args()
    print(oracle_table(args.seed, args.n_lesions))
    if args.baseline:
        print()
        print(baseline_table(args.seed + 100, args.baseline))


if __name__ == "__main__":
    main()
