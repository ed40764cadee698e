"""The cohort's generative model of classes and evidence, and its exact oracle (naive Bayes).

A patient's class ``y`` is drawn from :data:`PRIOR`; given ``y``, each lesion's image latent, each laboratory value
and each note sentence are drawn independently, so the true class probabilities of a lesion given what can be
observed about it (its latent, the patient's observed labs and note) are prior x likelihoods, normalised. No pixels
here (``phantom`` renders the latent); numpy and scipy only. The README of this package states every number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, logsumexp
from scipy.stats import norm

LABELS: tuple[str, ...] = ("benign", "intermediate", "malignant")
MODALITIES: tuple[str, ...] = ("image", "labs", "notes")
PRIOR: tuple[float, float, float] = (0.4, 0.3, 0.3)

# Image evidence: one latent z per lesion, z | y ~ N(IMAGE_MEANS[y], IMAGE_SD); ``phantom`` draws the lesion's look
# (size, transition zone, rim, lucency, septa, permeation, soft-tissue mass) as monotone functions of z.
IMAGE_MEANS: tuple[float, float, float] = (-1.4, 0.3, 0.9)
IMAGE_SD = 1.0


@dataclass(frozen=True)
class LabModel:
    """One laboratory test: ln(value) | y ~ N(ln(median[y]), log_sd[y]); reported rounded to ``decimals``."""

    loinc: str
    display: str
    unit: str  # UCUM
    medians: tuple[float, float, float]
    log_sds: tuple[float, float, float]
    decimals: int

    def log_likelihood(self, value: float) -> np.ndarray:
        """ln P(the reported value | y) per class: the probability of the rounding interval, so it is exact for
        the value as a reader of the FHIR Observation sees it."""
        half = 0.5 * 10.0 ** -self.decimals
        mu = np.log(np.asarray(self.medians))
        sd = np.asarray(self.log_sds)
        upper = (np.log(value + half) - mu) / sd
        if value - half <= 0:
            return np.asarray(log_ndtr(upper), dtype=np.float64)
        lower = (np.log(value - half) - mu) / sd
        # ln(Phi(u) - Phi(l)) = ln Phi(u) + ln(1 - exp(ln Phi(l) - ln Phi(u))); in the upper tail the same with the
        # mirrored interval (Phi(-l) - Phi(-u)), so that neither difference rounds to zero.
        upper_tail = lower > 0
        big = np.where(upper_tail, log_ndtr(-lower), log_ndtr(upper))
        small = np.where(upper_tail, log_ndtr(-upper), log_ndtr(lower))
        return np.asarray(big + np.log1p(-np.exp(small - big)), dtype=np.float64)


# Medians and log-sds chosen so that the labs alone give a macro AUC of about 0.73 (README, measured): alkaline
# phosphatase and LDH rise with malignancy, calcium barely; CRP is highest in the intermediate class (aggressive but
# benign lesions with an inflammatory reaction), so the labs separate what the image separates least.
LAB_MODELS: tuple[LabModel, ...] = (
    LabModel("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
             (90.0, 95.0, 128.0), (0.35, 0.35, 0.45), 0),
    LabModel("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
             (190.0, 195.0, 250.0), (0.30, 0.30, 0.40), 0),
    LabModel("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", (9.4, 9.4, 9.6), (0.05, 0.05, 0.06), 1),
    LabModel("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L",
             (3.0, 5.7, 3.7), (0.9, 0.9, 0.9), 1),
)
LAB_MISSING_PROBABILITY = 0.2  # per lab, independent of everything: a missing lab says nothing about y

# A note has an uninformative opening (age, sex, side, body part; all independent of y) and 1-3 sentences. Each
# sentence comes from the true class's pool with probability NOTE_TRUE_POOL_PROBABILITY, else from one of the two
# other pools (equally likely); sentences are not repeated within a note.
NOTE_TRUE_POOL_PROBABILITY = 0.55
NOTE_MISSING_PROBABILITY = 0.1
NOTE_SENTENCE_COUNTS: tuple[tuple[int, float], ...] = ((1, 0.3), (2, 0.4), (3, 0.3))
NOTE_SENTENCES: dict[str, tuple[str, ...]] = {
    "benign": (
        "Incidental finding, patient asymptomatic.",
        "No night pain, no weight loss.",
        "Long-standing painless lump, unchanged for years.",
        "Follow-up of a known lesion, reported as stable.",
        "Minor knock during sport, otherwise well.",
        "Found on imaging done for an unrelated sprain.",
        "Full range of movement, no tenderness.",
        "Prior films show the same appearance.",
    ),
    "intermediate": (
        "Intermittent dull ache for several months.",
        "Mild swelling with activity-related pain.",
        "Lesion slowly enlarging compared with prior imaging.",
        "Occasional pain relieved by simple analgesia.",
        "Local tenderness on examination, no systemic symptoms.",
        "Pain after exercise that settles with rest.",
        "Slight fullness of the limb noticed over the past year.",
        "Recurrence suspected at the site of an earlier curettage.",
    ),
    "malignant": (
        "Progressive pain at rest, waking at night.",
        "Rapidly growing palpable mass over weeks.",
        "Unintentional weight loss and fatigue.",
        "Warm, firm swelling with restricted movement.",
        "Night sweats and constant deep bone pain.",
        "Pathological fracture suspected after minimal trauma.",
        "Pain no longer controlled by regular analgesia.",
        "Enlarged regional lymph nodes on examination.",
    ),
}
_POOL_OF: dict[str, int] = {s: LABELS.index(label) for label, pool in NOTE_SENTENCES.items() for s in pool}


def draw_label(rng: np.random.Generator) -> int:
    return int(rng.choice(len(LABELS), p=PRIOR))


def draw_image_evidence(rng: np.random.Generator, label: int, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.normal(IMAGE_MEANS[label], IMAGE_SD, size=n))


def draw_labs(rng: np.random.Generator, label: int) -> dict[str, float]:
    """LOINC -> reported value; each lab is drawn (so the stream does not depend on what is missing) then dropped
    with probability LAB_MISSING_PROBABILITY."""
    labs: dict[str, float] = {}
    for lab in LAB_MODELS:
        value = float(np.exp(rng.normal(np.log(lab.medians[label]), lab.log_sds[label])))
        if rng.random() >= LAB_MISSING_PROBABILITY:
            labs[lab.loinc] = round(value, lab.decimals)
    return labs


def draw_note_sentences(rng: np.random.Generator, label: int) -> tuple[str, ...] | None:
    """The informative sentences of the note, or None when the patient has no note."""
    counts, weights = zip(*NOTE_SENTENCE_COUNTS)
    n = int(rng.choice(counts, p=weights))
    pools = [label if rng.random() < NOTE_TRUE_POOL_PROBABILITY else (label + int(rng.integers(1, 3))) % 3
             for _ in range(n)]
    chosen: list[str] = []
    for pool in sorted(set(pools)):
        names = NOTE_SENTENCES[LABELS[pool]]
        picks = rng.choice(len(names), size=pools.count(pool), replace=False)
        chosen.extend(names[int(i)] for i in picks)
    order = rng.permutation(len(chosen))
    missing = rng.random() < NOTE_MISSING_PROBABILITY
    return None if missing else tuple(chosen[int(i)] for i in order)


def image_log_likelihood(evidence: Sequence[float]) -> np.ndarray:
    """(n, 3): ln p(z | y) of each lesion's latent."""
    z = np.asarray(evidence, dtype=np.float64).reshape(-1, 1)
    return np.asarray(norm.logpdf(z, np.asarray(IMAGE_MEANS)[None, :], IMAGE_SD), dtype=np.float64)


def labs_log_likelihood(labs: Mapping[str, float]) -> np.ndarray:
    """(3,): sum over the observed labs; unknown LOINC codes are ignored, missing ones contribute nothing."""
    total = np.zeros(len(LABELS))
    for lab in LAB_MODELS:
        if lab.loinc in labs:
            total += lab.log_likelihood(float(labs[lab.loinc]))
    return total


def note_sentences(note: str | None) -> tuple[str, ...]:
    """The pool sentences found in a note's text (the opening sentence matches none)."""
    return tuple(s for s in _POOL_OF if note and s in note)


def note_log_likelihood(note: str | None) -> np.ndarray:
    """(3,): each observed sentence adds ln q where its pool is y, else ln((1 - q) / 2). Which sentence of a pool is
    drawn, how many and in what order do not depend on y, so they cancel in the posterior."""
    q = NOTE_TRUE_POOL_PROBABILITY
    total = np.zeros(len(LABELS))
    for sentence in note_sentences(note):
        total += np.where(np.arange(len(LABELS)) == _POOL_OF[sentence], np.log(q), np.log((1 - q) / 2))
    return total


def check_modalities(use: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(use)
    unknown = sorted(set(chosen) - set(MODALITIES))
    if unknown:
        raise ValueError(f'Argument "use" names unknown modalities {unknown}; choose from {list(MODALITIES)}.')
    return chosen


def posterior(evidence: Sequence[float], labs: Mapping[str, float], note: str | None,
              use: Iterable[str] = MODALITIES) -> np.ndarray:
    """(n, 3): p(y | each lesion's latent, the labs, the note), using only the modalities in ``use`` (an empty
    ``use`` gives the prior)."""
    chosen = check_modalities(use)
    n = len(evidence)
    log_p = np.tile(np.log(np.asarray(PRIOR)), (n, 1))
    if "image" in chosen:
        log_p += image_log_likelihood(evidence)
    if "labs" in chosen:
        log_p += labs_log_likelihood(labs)[None, :]
    if "notes" in chosen:
        log_p += note_log_likelihood(note)[None, :]
    return np.asarray(np.exp(log_p - logsumexp(log_p, axis=1, keepdims=True)), dtype=np.float64)
