"""pipelines.radiograph_lesion.train and ``dicom-ai-node train``: a tiny datalist trains into a bundle the pipeline
loads; the run logs every epoch, checkpoints every epoch, and a resumed run ends with the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch
from pydicom import dcmread
from typer.testing import CliRunner

from pipelines.base import ClinicalContext, InstanceRef, LabValue, StudyInput
from pipelines.common.bundle_layout import CARD, MODEL, read_config
from pipelines.common.datalist import Datalist, DatalistError, load_datalist, read_fhir_bundle
from pipelines.radiograph_lesion.train import TrainError, TrainReport, train_from_datalist
from tiny_datalist import write_tiny_datalist

EPOCHS = {"epochs_detector": 1, "epochs_classifier": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> Datalist:
    return load_datalist(write_tiny_datalist(tmp_path_factory.mktemp("site"), n_train=4, n_val=2))


@pytest.fixture(scope="module")
def trained(datalist: Datalist, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport]:
    out = tmp_path_factory.mktemp("bundle")
    return out, train_from_datalist(datalist, out, version="9.9.9", seed=5, device="cpu", **EPOCHS)


def _weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(folder / MODEL, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def test_the_bundle_loads_and_the_pipeline_runs_on_a_study(trained: tuple[Path, TrainReport],
                                                           datalist: Datalist) -> None:
    from pipelines.radiograph_lesion.pipeline import RadiographLesionPipeline

    out, report = trained
    config = read_config(out)
    assert config["version"] == "9.9.9" and config["fusion"]["strategy"] == "early"
    assert config["training"]["datalist"] == "tiny-synthetic-3" and config["training"]["seed"] == 5
    pipeline = RadiographLesionPipeline(bundle_dir=out, device="cpu")
    assert pipeline.threshold == report.detection_threshold and pipeline.version == "9.9.9"
    assert config["ood"]["fit"] == {**config["ood"]["fit"], "datalist": "tiny-synthetic-3", "split": "training",
                                    "images": 4}
    assert config["ood"]["held_out"]["images"] == 2 and pipeline.ood.threshold == config["ood"]["threshold"] > 0
    # an image the check leaves out is told why in words true of this bundle, not of the synthetic cohort
    assert pipeline.ood.detail(99.0).endswith("percentile of the validation images of datalist tiny-synthetic-3)")

    item = datalist.split("training")[0]
    ds = dcmread(item.image, stop_before_pixels=True)
    study = StudyInput(str(ds.StudyInstanceUID), (InstanceRef(item.image, str(ds.SOPInstanceUID),
                                                              str(ds.SOPClassUID), str(ds.SeriesInstanceUID), "CR"),))
    clinical = read_fhir_bundle(item.fhir)  # type: ignore[arg-type]
    context = ClinicalContext("ok", labs={k: LabValue(k, v, clinical.units[k], "2025-01-01T00:00:00Z")
                                          for k, v in clinical.labs.items()}, notes=clinical.notes)
    result = pipeline.run(study, context)
    # one image, analysed or left out with its reason; whatever it found names the inputs it used
    assert len(result.images_analysed) + len(result.instances_excluded) == 1
    assert result.pipeline_version == "9.9.9" and result.detection_threshold == report.detection_threshold
    for finding in result.findings:
        assert finding.inputs_used[0] == "image" and ("notes" in finding.inputs_used) == bool(clinical.notes)
    # written in MONAI's bundle layout, with MONAI's metadata fields and the node's declarations
    from pipelines.registry import read_bundle

    bundle = read_bundle(out, "site")
    assert (bundle.version, bundle.implementation) == ("9.9.9", "radiograph-lesion")
    assert bundle.requirements == pipeline.requirements
    assert bundle.metadata["monai_version"] and bundle.metadata["changelog"][bundle.version]


def test_every_epoch_is_logged_and_checkpointed(trained: tuple[Path, TrainReport]) -> None:
    out, _ = trained
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("detector", 1), ("classifier", 1), ("classifier", 2)]
    for r in records:
        assert r["loss"] > 0 and r["seconds"] >= 0 and r["val"]
    assert set(records[1]["val"]) == {"loss", "accuracy"} and "best_f1" in records[0]["val"]
    names = sorted(p.name for p in (out / "train" / "checkpoints").iterdir())
    assert names == ["classifier-epoch-001.pt", "classifier-epoch-002.pt", "detector-epoch-001.pt"]
    state = torch.load(out / "train" / "checkpoints" / "classifier-epoch-002.pt", weights_only=False)
    assert {"model", "optimiser", "scheduler", "numpy_rng", "torch_rng", "epoch"} <= set(state)
    assert state["epoch"] == 2


def test_the_card_gives_figures_only_with_intervals(trained: tuple[Path, TrainReport]) -> None:
    out, report = trained
    card = (out / CARD).read_text()
    assert "NOT for clinical use" in card and "--datalist" in card
    recall = report.metrics["detection"]["recall"]
    assert {"value", "ci_low", "ci_high", "n_patients"} <= set(recall) and recall["n_patients"] == 2
    assert "95% CI" in card


def test_resume_ends_with_the_same_weights(trained: tuple[Path, TrainReport], datalist: Datalist,
                                          tmp_path: Path) -> None:
    """A run killed after classifier epoch 1 (its last checkpoint) and resumed by the CLI equals the whole run."""
    from node.cli import app

    out, _ = trained
    shutil.copytree(out / "train", tmp_path / "train")
    (tmp_path / "train" / "checkpoints" / "classifier-epoch-002.pt").unlink()
    lines = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "train" / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    result = CliRunner().invoke(app, [
        "train", "radiograph-lesion", "--datalist", str(datalist.path), "--out", str(tmp_path), "--version", "9.9.9",
        "--seed", "5", "--epochs-detector", "1", "--epochs-classifier", "2", "--device", "cpu", "--threads", "1",
        "--resume"])
    assert result.exit_code == 0, result.output
    resumed, whole = _weights(tmp_path), _weights(out)
    for stage in ("detector", "classifier"):
        assert resumed[stage].keys() == whole[stage].keys()
        assert all(torch.equal(resumed[stage][k], whole[stage][k]) for k in whole[stage]), stage
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("detector", 1), ("classifier", 1), ("classifier", 2)]

    # without --resume, a folder with checkpoints is not overwritten; other settings do not resume
    with pytest.raises(TrainError, match="--resume"):
        train_from_datalist(datalist, tmp_path, seed=5, device="cpu", **EPOCHS)
    with pytest.raises(TrainError, match="seed"):
        train_from_datalist(datalist, tmp_path, seed=6, device="cpu", resume=True, **EPOCHS)


def test_fusion_lab_encoding_and_inputs_are_options(datalist: Datalist, tmp_path: Path) -> None:
    from pipelines.radiograph_lesion.pipeline import RadiographLesionPipeline

    report = train_from_datalist(datalist, tmp_path, strategy="late", lab_encoding="text", inputs=("image", "labs"),
                                 epochs_detector=1, epochs_classifier=1, device="cpu")
    pipeline = RadiographLesionPipeline(bundle_dir=tmp_path, device="cpu")
    fusion = pipeline.bundle.fusion_config
    assert (fusion.strategy, fusion.lab_encoding, fusion.inputs) == ("late", "text", ("image", "labs"))
    assert fusion.lab_reference["6768-6"].name == "ALP" and report.n_train_patients == 4
    assert "late fusion" in (tmp_path / CARD).read_text()


def test_bad_options_and_datalists_name_the_fix(datalist: Datalist, tmp_path: Path) -> None:
    from node.cli import app

    bad = CliRunner().invoke(app, ["train", "radiograph-lesion", "--datalist", str(datalist.path), "--out",
                                   str(tmp_path), "--fusion", "middle"])
    assert bad.exit_code == 2 and "early, joint, late" in bad.output
    bad = CliRunner().invoke(app, ["train", "radiograph-lesion", "--datalist", str(datalist.path), "--out",
                                   str(tmp_path), "--inputs", "labs,notes"])
    assert bad.exit_code == 2 and "'image'" in bad.output
    raw = json.loads(datalist.path.read_text())
    renamed = datalist.path.parent / "renamed.json"
    renamed.write_text(json.dumps({**raw, "classes": ["a", "b", "c"]}))
    with pytest.raises(DatalistError, match="'classes'.*benign"):
        train_from_datalist(load_datalist(renamed), tmp_path / "x", device="cpu", **EPOCHS)
    missing = CliRunner().invoke(app, ["train", "radiograph-lesion", "--datalist", str(tmp_path / "none.json"),
                                       "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "no such datalist file" in missing.output


def test_detector_from_reuses_stage_one_and_trains_only_the_fusion_head(
        trained: tuple[Path, TrainReport], datalist: Datalist, tmp_path: Path) -> None:
    source, _ = trained
    report = train_from_datalist(datalist, tmp_path, inputs=("image",), epochs_classifier=1, device="cpu",
                                 detector_from=source)
    reused, original = _weights(tmp_path), _weights(source)
    assert reused["detector"].keys() == original["detector"].keys()
    assert all(torch.equal(reused["detector"][k], original["detector"][k]) for k in original["detector"])
    config = read_config(tmp_path)
    assert config["training"]["detector_from"] == "radiograph-lesion 9.9.9"
    assert config["training"]["epochs_detector"] == 0 and config["fusion"]["inputs"] == ["image"]
    log = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"classifier"} and report.n_train_patients == 4
    with pytest.raises(TrainError, match="not a bundle directory"):
        train_from_datalist(datalist, tmp_path / "x", device="cpu", detector_from=tmp_path / "nowhere")
