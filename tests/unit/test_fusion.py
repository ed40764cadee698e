"""pipelines.common.fuse: each fusion strategy x lab encoding trains, uses labs and notes, and masks what is missing."""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np
import pytest
import torch

from devtools.synthetic.cohort import NOTE_SENTENCES
from pipelines.common.bundle_layout import read_config
from pipelines.common import fuse
from pipelines.radiograph_lesion.spec import (
    BUNDLES_DIR, RADIOGRAPH_LESION, RADIOGRAPH_LESION_LAB_REFERENCE, RADIOGRAPH_LESION_LABS,
)

LOINCS = tuple(lab.loinc for lab in RADIOGRAPH_LESION_LABS)
CLASSES = ("benign", "intermediate", "malignant")
ALP_MEAN, LDH_MEAN = (80.0, 150.0, 300.0), (170.0, 240.0, 420.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is fastest, and leaves the other cores to the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _RememberingEncoder(fuse.NoteEncoder):
    """The real encoder, each distinct text encoded once per test module (the tests re-prepare the same texts)."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.seen: dict[str, np.ndarray] = {}

    def encode(self, notes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        new = [n for n in dict.fromkeys(notes) if n and n not in self.seen]
        if new:
            for text, row in zip(new, super().encode(new)[0]):
                self.seen[text] = row
        out = np.stack([self.seen[n] if n else np.zeros(fuse.TEXT_DIM, np.float32) for n in notes])
        return out, np.array([0.0 if n else 1.0 for n in notes], dtype=np.float32)


@pytest.fixture(scope="module")
def encoder() -> fuse.NoteEncoder:
    return _RememberingEncoder()


def _config(strategy: str, lab_encoding: str) -> fuse.FusionConfig:
    return fuse.FusionConfig(
        crop_size=16, block_inplanes=(4, 8, 8, 8), image_dim=8, hidden=16, lab_loincs=LOINCS,
        lab_norm={loinc: (5.0, 0.5) for loinc in LOINCS}, strategy=strategy,  # type: ignore[arg-type]
        lab_encoding=lab_encoding,  # type: ignore[arg-type]
        lab_reference={k: fuse.LabReference(*v) for k, v in RADIOGRAPH_LESION_LAB_REFERENCE.items()},
    )


def _cases(n: int, seed: int) -> tuple[np.ndarray, list[dict[str, float]], list[str | None], np.ndarray]:
    """Crops that say little (noise), labs and notes that say the class; some labs and notes missing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    crops = rng.normal(0.5, 0.1, (n, 16, 16)).astype(np.float32)
    labs: list[dict[str, float]] = []
    notes: list[str | None] = []
    for y in labels:
        values = {"6768-6": float(rng.normal(ALP_MEAN[y], 10.0)), "2532-0": float(rng.normal(LDH_MEAN[y], 15.0))}
        labs.append({} if rng.random() < 0.15 else values)
        notes.append(None if rng.random() < 0.15 else str(rng.choice(NOTE_SENTENCES[CLASSES[y]])))
    return crops, labs, notes, labels


def _loss(model: fuse.LesionClassifier, inputs: fuse.FusionInputs, labels: np.ndarray) -> float:
    probs = fuse.classify(model, inputs, torch.device("cpu"))
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + 1e-12)))


@pytest.mark.parametrize("lab_encoding", ["vector", "text"])
@pytest.mark.parametrize("strategy", ["early", "joint", "late"])
def test_each_strategy_trains_uses_labs_and_notes_and_masks_what_is_missing(
    encoder: fuse.NoteEncoder, strategy: str, lab_encoding: str
) -> None:
    torch.manual_seed(0)
    config = _config(strategy, lab_encoding)
    crops, labs, notes, labels = _cases(64, seed=1)
    inputs = fuse.prepare_inputs(config, crops, labs, notes, encoder)
    model = fuse.LesionClassifier(config)
    before = _loss(model, inputs, labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    target = torch.from_numpy(labels)
    for _ in range(60):
        model.train()
        batch = fuse.drop_modalities(inputs, 0.2, rng)
        loss = torch.nn.functional.cross_entropy(model(*batch.tensors(torch.device("cpu"))), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = _loss(model, inputs, labels)
    assert after < 0.7 * before, (before, after)

    # The trained model reads labs and notes: withholding either changes its probabilities.
    full = fuse.classify(model, inputs, torch.device("cpu"))
    for withheld in ("labs", "notes"):
        ablated = fuse.prepare_inputs(config, crops, labs, notes, encoder, withhold=frozenset({withheld}))
        assert np.abs(fuse.classify(model, ablated, torch.device("cpu")) - full).max() > 0.05, withheld

    # Missing is masked, not imputed: whatever lies behind a missing flag, the output is the same.
    hidden = fuse.prepare_inputs(config, crops, labs, notes, encoder, withhold=frozenset({"labs", "notes"}))
    noise = np.random.default_rng(2)
    garbage = fuse.FusionInputs(hidden.crops, noise.normal(0, 5, hidden.labs.shape).astype(np.float32),
                                hidden.lab_missing, noise.normal(0, 5, hidden.notes.shape).astype(np.float32),
                                hidden.note_missing)
    assert np.array_equal(fuse.classify(model, hidden, torch.device("cpu")),
                          fuse.classify(model, garbage, torch.device("cpu")))
    assert hidden.lab_missing.min() == 1.0 and hidden.note_missing.min() == 1.0


def test_a_single_missing_lab_is_masked_in_the_vector_encoding() -> None:
    config = _config("early", "vector")
    crops, _, _, _ = _cases(4, seed=3)
    inputs = fuse.prepare_inputs(config, crops, [{"6768-6": 200.0}] * 4, [None] * 4, None)
    assert inputs.lab_missing[0].tolist() == [0.0, 1.0, 1.0, 1.0]
    model = fuse.LesionClassifier(config).eval()
    labs = inputs.labs.copy()
    labs[:, 1:] = 123.0  # behind the flags of the three missing labs
    changed = fuse.FusionInputs(inputs.crops, labs, inputs.lab_missing, inputs.notes, inputs.note_missing)
    assert np.array_equal(fuse.classify(model, inputs, torch.device("cpu")),
                          fuse.classify(model, changed, torch.device("cpu")))


def test_late_fusion_gives_a_missing_modality_no_weight() -> None:
    torch.manual_seed(0)
    config = _config("late", "vector")
    model = fuse.LesionClassifier(config).eval()
    with torch.no_grad():
        model.modality_weight.copy_(torch.tensor([0.0, 2.0, 1.0]))
    crops, _, _, _ = _cases(3, seed=4)
    inputs = fuse.prepare_inputs(config, crops, [{}] * 3, [None] * 3, None)  # labs and notes absent
    image_only = torch.softmax(model.image_head(model.image(torch.from_numpy(crops[:, None]))), dim=1).detach().numpy()
    assert np.allclose(fuse.classify(model, inputs, torch.device("cpu")), image_only, atol=1e-6)


def test_labs_render_as_sentences_against_their_reference() -> None:
    config = _config("early", "text")
    assert fuse.lab_sentence(410.0, config.lab_reference["6768-6"]) == "ALP elevated: 410 U/L, reference 40-130"
    text = fuse.lab_text({"17861-6": 8.1, "6768-6": 90.0}, config)
    assert text == "ALP normal: 90 U/L, reference 40-130. Calcium low: 8.1 mg/dL, reference 8.6-10.3."
    assert fuse.lab_text({}, config) is None
    # the sentences state the unit the model was trained on: the spec's
    assert {k: v[2] for k, v in RADIOGRAPH_LESION_LAB_REFERENCE.items()} == {
        lab.loinc: lab.unit for lab in RADIOGRAPH_LESION_LABS}


def test_text_needs_an_encoder_and_bad_config_names_the_key() -> None:
    config = _config("joint", "text")
    crops, _, _, _ = _cases(2, seed=5)
    with pytest.raises(ValueError, match="text_encoder"):
        fuse.prepare_inputs(config, crops, [{"6768-6": 100.0}, {}], [None, None], None)
    # nothing to read: no encoder needed, both modalities flagged missing
    empty = fuse.prepare_inputs(config, crops, [{}, {}], [None, "  "], None)
    assert empty.lab_missing.tolist() == [[1.0], [1.0]] and empty.note_missing.tolist() == [1.0, 1.0]
    with pytest.raises(fuse.FusionConfigError, match="'strategy'.*early, joint, late"):
        fuse.FusionConfig(strategy="middle")  # type: ignore[arg-type]
    with pytest.raises(fuse.FusionConfigError, match="'lab_reference' lacks 1988-5"):
        fuse.FusionConfig(lab_encoding="text", lab_reference={k: fuse.LabReference(*v) for k, v in
                                                              RADIOGRAPH_LESION_LAB_REFERENCE.items()
                                                              if k != "1988-5"})
    with pytest.raises(ValueError, match="withhold"):
        fuse.prepare_inputs(config, crops, [{}, {}], [None, None], None, withhold=frozenset({"image"}))


def test_a_bundle_trained_without_an_input_never_sees_it(encoder: fuse.NoteEncoder) -> None:
    config = fuse.FusionConfig(**{**_config("early", "vector").__dict__, "inputs": ("image", "labs")})
    crops, labs, notes, _ = _cases(6, seed=6)
    inputs = fuse.prepare_inputs(config, crops, labs, ["Night sweats and constant deep bone pain."] * 6, encoder)
    assert inputs.note_missing.tolist() == [1.0] * 6 and not inputs.notes.any()


def test_the_shipped_config_loads_as_early_vector_and_round_trips() -> None:
    # the "fusion" section as 0.2.0 wrote it, before strategies existed
    added = ("strategy", "lab_encoding", "modality_dropout", "lab_reference", "inputs")
    fusion = {k: v for k, v in read_config(BUNDLES_DIR / RADIOGRAPH_LESION)["fusion"].items() if k not in added}
    config = fuse.FusionConfig.from_dict(fusion)
    assert (config.strategy, config.lab_encoding, config.inputs) == ("early", "vector", ("image", "labs", "notes"))
    text = fuse.FusionConfig.from_dict(_config("late", "text").to_dict())
    assert text == _config("late", "text")
    with pytest.raises(fuse.FusionConfigError, match="lacks 'hidden'"):
        fuse.FusionConfig.from_dict({k: v for k, v in fusion.items() if k != "hidden"})


def test_a_lab_in_another_unit_counts_as_missing_not_converted() -> None:
    from pipelines.radiograph_lesion.spec import usable_labs

    labs, other_unit = usable_labs({"6768-6": 100.0, "17861-6": 2.4, "2345-7": 5.0},
                                   {"6768-6": "U/L", "17861-6": "mmol/L", "2345-7": "mmol/L"})
    assert labs == {"6768-6": 100.0} and other_unit == 1  # calcium in mmol/L left out; glucose is not a model input
