"""``python -m devtools.synthetic.measure``: the per-modality oracle AUCs that the README quotes, with intervals.

Draws patients' truth (no pixels) until ``--n-lesions`` lesions, computes each lesion's oracle from the image latent,
the labs, the note and their combinations, and evaluates them with ``pipelines.evaluation`` (patient-level
bootstrap). Prints a Markdown table.
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-lesions", type=int, default=2000)
    args = parser.parse_args()
    print(oracle_table(args.seed, args.n_lesions))


if __name__ == "__main__":
    main()
