"""Evaluation a reviewer accepts: figures with patient-level bootstrap intervals, paired DeLong tests, plots.

Computes from plain arrays (no model, no DICOM) what ``dicom-ai-node evaluate`` reports: lesion classification
(one-vs-rest and macro AUC, accuracy, precision, recall, F1, ECE) for named prediction sets (ablation rows) and the
oracle, paired AUC comparisons, and detection mAP@IoU and FROC. Each module's docstring names its statistics and
their references. Typical use::

    report = evaluate(LesionClassification(classes, labels, patients, {"image": p_img, "all": p_all}, oracle),
                      detections, comparisons=[("all", "image")])
    write_report(report, Path("out"))
"""
