"""``python -m devtools.synthetic.measure_chest_ct``: the chest CT cohort's oracle AUCs per modality, with intervals.

Draws patients' truth (nodules, labs, note; no pixels) and evaluates each nodule's oracle from the image latent, the
tumour markers, the note and all three with ``pipelines.evaluation`` (patient-level bootstrap). Prints the README's
Markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np

from devtools.synthetic.chest_ct import LABELS, SMALL_GRID, generate_case, posterior
from pipelines.evaluation import EvaluationConfig, LesionClassification, evaluate

SETS: dict[str, tuple[str, ...]] = {"image": ("image",), "labs": ("labs",), "notes": ("notes",),
                                    "image+labs": ("image", "labs")}


def oracle_table(seed: int, n_patients: int, n_resamples: int = 1000) -> str:
    labels: list[int] = []
    patients: list[str] = []
    rows: dict[str, list[np.ndarray]] = {name: [] for name in (*SETS, "all")}
    for index in range(n_patients):
        case = generate_case(seed, index, SMALL_GRID)  # the truth does not depend on the grid; nothing is rendered
        if not case.nodules:
            continue
        evidence = [n.evidence for n in case.nodules]
        labels += [case.label] * len(evidence)
        patients += [case.patient_id] * len(evidence)
        for name, use in SETS.items():
            rows[name].append(posterior(evidence, case.labs, case.note, use))
        rows["all"].append(np.asarray([n.oracle for n in case.nodules]))
    report = evaluate(
        LesionClassification(LABELS, np.asarray(labels), tuple(patients),
                             {name: np.concatenate(rows[name]) for name in SETS}, np.concatenate(rows["all"])),
        config=EvaluationConfig(n_resamples=n_resamples, seed=seed),
    )
    assert report.oracle is not None
    out = [f"seed {seed}: {report.n_lesions} nodules of {report.n_patients} patients ({n_resamples} patient-level "
           "bootstrap resamples)", "",
           "| oracle using | macro AUC (95% CI) | accuracy (95% CI) |", "|---|---|---|"]
    for metrics in (*report.models, report.oracle):
        name = "image+labs+notes" if metrics.name == "oracle" else metrics.name
        out.append(f"| {name} | {metrics.macro_auc.text()} | {metrics.accuracy.text()} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic.measure_chest_ct", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-patients", type=int, default=2000)
    parser.add_argument("--n-resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    print(oracle_table(args.seed, args.n_patients, args.n_resamples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
