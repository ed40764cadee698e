"""Bundles in MONAI's layout and the registry as data: a copied bundle under another name in a site's bundles folder
is listed, routed (by default and by name) and loaded with no code change; install refuses what it cannot run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.config import ConfigError, RouteRule, parse_settings
from node.service import check_routes
from node_fakes import settings
from pipelines.common import bundle_layout
from pipelines.common.bundle_layout import BundleError, read_config, read_metadata, split_config
from pipelines.registry import (
    SHIPPED_BUNDLES, available_pipelines, installed_bundles, load_pipeline, pipeline_requirements, pipeline_version,
)

SHIPPED = SHIPPED_BUNDLES / "radiograph-lesion"
runner = CliRunner()


def copy_as(name: str, out: Path, **changes: object) -> Path:
    """The shipped bundle copied to ``out/name`` with its metadata renamed (and ``changes`` applied)."""
    target = out / name
    shutil.copytree(SHIPPED, target)
    metadata = read_metadata(target)
    metadata.update(name=name, **changes)
    (target / bundle_layout.METADATA).write_text(bundle_layout.dump_json(metadata))
    return target


def test_the_shipped_bundle_is_in_monais_layout_and_its_config_round_trips(tmp_path: Path) -> None:
    metadata = json.loads((SHIPPED / bundle_layout.METADATA).read_text())
    inference = json.loads((SHIPPED / bundle_layout.INFERENCE).read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "data_source",
                "data_type", "intended_use", "network_data_format", "references"):
        assert key in metadata, key
    assert isinstance(metadata["intended_use"], str) and metadata["version"] in metadata["changelog"]
    assert set(metadata["network_data_format"]) == {"inputs", "outputs"}
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [inference["input_size"]] * 2
    assert (metadata["name"], metadata["pipeline"]) == ("radiograph-lesion", "radiograph-lesion")
    assert [lab["loinc"] for lab in metadata["inputs"]["labs"]] == inference["fusion"]["lab_loincs"]
    assert set(inference) == {"input_size", "detection_threshold", "detector", "fusion", "ood"}
    assert inference["ood"]["file"] == "models/ood.npz" and (SHIPPED / inference["ood"]["file"]).is_file()
    # every reported metric carries its interval
    def figures(prefix: str, value: object) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
        if isinstance(value, dict) and "value" in value:
            return [(prefix, value)]
        if isinstance(value, dict):
            return [f for k, v in value.items() for f in figures(f"{prefix}.{k}", v)]
        return []

    stored = figures("metrics", {k: v for k, v in metadata["metrics"].items() if k != "evaluation"})
    assert stored
    for name, entry in stored:
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert all("95% CI" in value or value.startswith(("< 0.", "0.")) and "DeLong" in figure
               for figure, value in metadata["metrics"]["evaluation"]["rows"])
    # the merged config (what training writes and loading reads) splits into exactly these two files and back
    config = read_config(SHIPPED)
    assert config["intended_use"]["modalities"] == ["CR", "DX"]
    assert split_config(config) == (metadata, inference)
    bundle_layout.write_configs(tmp_path, config)
    assert read_config(tmp_path) == config


def test_a_site_bundle_under_another_name_is_listed_routed_and_loaded_by_name(tmp_path: Path) -> None:
    site = tmp_path / "bundles"
    copy_as("site-bone", site, version="1.0.0", changelog={"1.0.0": "the site's copy"})
    assert available_pipelines() == ["chest-ct-nodule", "radiograph-lesion"]
    assert available_pipelines(site) == ["chest-ct-nodule", "radiograph-lesion", "site-bone"]
    assert pipeline_version("site-bone", site) == "1.0.0"
    assert pipeline_requirements("site-bone", site) == pipeline_requirements("radiograph-lesion")
    with pytest.raises(KeyError, match="site-bone"):
        pipeline_requirements("no-such-pipeline", site)

    # default routing: every installed bundle by its intended use
    routes = settings(tmp_path, pipelines={"bundles_dir": str(site)}).routes
    assert [r.pipeline for r in routes] == ["chest-ct-nodule", "radiograph-lesion", "site-bone"]
    assert routes[1].patterns == routes[2].patterns
    # routing by name: accepted at start-up; a name that is not installed is refused, naming the key and the fix
    by_name = parse_settings({"node": {"data_dir": str(tmp_path / "data")}, "pipelines": {"bundles_dir": str(site)},
                              "route": [{"pipeline": "site-bone"}]})
    assert by_name.routes == (RouteRule("site-bone", {}),)
    check_routes(by_name)
    with pytest.raises(ConfigError, match=r"route\[0\]\.pipeline = 'site-bone'.*pipelines install"):
        check_routes(parse_settings({"node": {"data_dir": str(tmp_path / "data")}, "route": [{"pipeline": "site-bone"}]}))

    # loading by name hands the bundle's folder to its implementation: the results carry the site's name
    pipeline = load_pipeline("site-bone", device="cpu", bundles_dir=site)
    assert (pipeline.name, pipeline.version) == ("site-bone", "1.0.0")
    assert Path(getattr(pipeline, "bundle_dir")) == site / "site-bone"


def test_requirements_of_a_site_bundle_need_no_torch(tmp_path: Path) -> None:
    copy_as("site-bone", tmp_path)
    code = ("import sys; from pathlib import Path; from pipelines.registry import pipeline_requirements as r; "
            f"assert r('site-bone', Path({str(tmp_path)!r})).labs; "
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize(("change", "words"), [
    (lambda m: m.pop("task"), r"metadata\.json: key \"task\" is missing"),
    (lambda m: m.update(pipeline="chest-ct"), r"\"pipeline\" = 'chest-ct' is not an implementation.*radiograph-lesion"),
    (lambda m: m.update(changelog={}), r"\"changelog\" has no entry for version"),
    (lambda m: m.update(name="Site Bone"), r"\"name\" = 'Site Bone': use lower-case"),
    (lambda m: m.update(name="../escape"), r"\"name\" = '../escape': use lower-case"),
    (lambda m: m["inputs"].update(labs=[{"loinc": "6768-6"}]), r"\"inputs\".\"labs\"\[0\] must be"),
    (lambda m: m["intended_images"].update(modalities=[]), r"intended_use\.modalities must name"),
    (lambda m: m.update(classes=m["classes"][:2]), r"lists 2 \"classes\" but the head .* has 3"),
    (lambda m: m.update(display_window={"center": -600, "width": 0}), r"\"display_window\" must be"),
])
def test_install_refuses_a_bad_bundle_naming_the_key(tmp_path: Path, change: object, words: str) -> None:
    source = copy_as("site-bone", tmp_path / "src")
    metadata = read_metadata(source)
    change(metadata)  # type: ignore[operator]
    (source / bundle_layout.METADATA).write_text(json.dumps(metadata))
    result = runner.invoke(app, ["pipelines", "install", str(source), "--bundles-dir", str(tmp_path / "site")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("not installed: ")
    assert re.search(words, result.output), result.output
    assert not (tmp_path / "site" / "site-bone").exists()


def test_install_refuses_weights_that_do_not_load(tmp_path: Path) -> None:
    source = copy_as("site-bone", tmp_path / "src")
    (source / bundle_layout.MODEL).write_bytes((source / bundle_layout.MODEL).read_bytes()[:1000])
    result = runner.invoke(app, ["pipelines", "install", str(source), "--bundles-dir", str(tmp_path / "site")])
    assert result.exit_code == 2 and "the radiograph-lesion implementation cannot load it" in result.output
    (source / bundle_layout.MODEL).unlink()
    result = runner.invoke(app, ["pipelines", "install", str(source), "--bundles-dir", str(tmp_path / "site")])
    assert result.exit_code == 2 and "models/model.pt: missing" in result.output


def test_install_copies_under_the_metadata_name_and_refuses_to_shadow(tmp_path: Path) -> None:
    site = tmp_path / "site"
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "data"\n[pipelines]\nbundles_dir = "{site}"\n')
    source = copy_as("site-bone", tmp_path / "src")
    shutil.move(source, tmp_path / "src" / "any-folder-name")
    source = tmp_path / "src" / "any-folder-name"
    result = runner.invoke(app, ["pipelines", "install", str(source), "--config", str(config)])
    assert result.exit_code == 0, result.output
    shipped = pipeline_version("radiograph-lesion")
    assert f"installed site-bone {shipped} (radiograph-lesion)" in result.output
    assert 'pipeline = "site-bone"' in result.output
    assert (site / "site-bone" / bundle_layout.MODEL).is_file() and [p.name for p in site.iterdir()] == ["site-bone"]
    listed = json.loads(runner.invoke(app, ["pipelines", "list", "--json", "--config", str(config)]).output)
    assert [(r["name"], r["origin"]) for r in listed] == [("chest-ct-nodule", "shipped"),
                                                          ("radiograph-lesion", "shipped"), ("site-bone", "site")]

    again = runner.invoke(app, ["pipelines", "install", str(source), "--config", str(config)])
    assert again.exit_code == 2 and "pass --replace" in again.output
    metadata = read_metadata(source)
    metadata.update(version="0.3.0", changelog={"0.3.0": "retrained"})
    (source / bundle_layout.METADATA).write_text(json.dumps(metadata))
    replaced = runner.invoke(app, ["pipelines", "install", str(source), "--config", str(config), "--replace"])
    assert replaced.exit_code == 0, replaced.output
    assert pipeline_version("site-bone", site) == "0.3.0" and [p.name for p in site.iterdir()] == ["site-bone"]

    shipped_name = copy_as("radiograph-lesion", tmp_path / "other")
    shadow = runner.invoke(app, ["pipelines", "install", str(shipped_name), "--config", str(config)])
    assert shadow.exit_code == 2 and "a shipped bundle named 'radiograph-lesion'" in shadow.output


def test_a_folder_in_bundles_dir_that_is_not_a_bundle_stops_the_config(tmp_path: Path) -> None:
    (tmp_path / "site" / "notes").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"pipelines\.bundles_dir: .*notes is not a bundle: it has no configs/"):
        settings(tmp_path, pipelines={"bundles_dir": str(tmp_path / "site")})
    copy_as("site-bone", tmp_path / "other")
    shutil.move(tmp_path / "other" / "site-bone", tmp_path / "site" / "renamed")
    shutil.rmtree(tmp_path / "site" / "notes")
    with pytest.raises(BundleError, match="differs from its folder 'renamed'"):
        installed_bundles(tmp_path / "site")


def test_bundles_dir_defaults_under_data_dir_and_is_relative_to_the_config(tmp_path: Path) -> None:
    assert settings(tmp_path).pipelines.bundles_dir == tmp_path / "data" / "bundles"
    assert parse_settings({"pipelines": {"bundles_dir": "site"}}, base_dir=tmp_path).pipelines.bundles_dir == \
        tmp_path / "site"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"pipelines\.bundles_dir = .* is a file: name a folder"):
        parse_settings({"pipelines": {"bundles_dir": str(tmp_path / "a-file")}})
    with pytest.raises(ConfigError, match=r"\[pipelines\] has unknown key\(s\) bundle_dir"):
        parse_settings({"pipelines": {"bundle_dir": "x"}})


def test_show_gives_intended_use_inputs_classes_metrics_with_intervals_and_the_card() -> None:
    result = runner.invoke(app, ["pipelines", "show", "radiograph-lesion"])
    assert result.exit_code == 0, result.output
    assert "NOT for clinical use" in result.output and "LOINC 1988-5 [mg/L]" in result.output
    assert 'malignant = (86049000, SCT, "Malignant neoplasm, primary")' in result.output
    assert "classification.all_inputs.macro_auc: 0.850 (95% CI 0.805 to 0.894, n 273)" in result.output
    assert "  macro AUC, all: 0.880 (95% CI 0.841 to 0.915)" in result.output
    assert "evaluation on the 'test' list of datalist 'synthetic-bone-seed0' (200 patients" in result.output
    assert f"model card: {SHIPPED / 'docs' / 'README.md'}" in result.output
    assert runner.invoke(app, ["pipelines", "show", "nope"]).exit_code == 2


def test_torchscript_export_matches_the_eager_networks(tmp_path: Path) -> None:
    import torch

    from pipelines.common.bundle import load_bundle
    from pipelines.common.export import _inputs, max_difference

    result = runner.invoke(app, ["pipelines", "export", "radiograph-lesion", "--format", "torchscript",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.ts", "detector.ts"]
    bundle = load_bundle(SHIPPED, "cpu")
    detector_inputs, classifier_inputs = _inputs(bundle, seed=3)  # not the inputs export checked itself on
    extra = {"metadata.json": ""}
    detector = torch.jit.load(str(tmp_path / "detector.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["name"] == "radiograph-lesion"
    assert max_difference(bundle.detector.network, detector, detector_inputs) <= 1e-4
    classifier = torch.jit.load(str(tmp_path / "classifier.ts"))
    assert max_difference(bundle.classifier, classifier, classifier_inputs) <= 1e-4
    assert runner.invoke(app, ["pipelines", "export", "radiograph-lesion", "--format", "tflite"]).exit_code == 2


def test_onnx_export_runs_in_onnx_runtime_like_the_eager_networks(tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    from pipelines.common.bundle import load_bundle
    from pipelines.common.export import _inputs, _flat

    result = runner.invoke(app, ["pipelines", "export", "radiograph-lesion", "--format", "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "classifier.onnx: max |ONNX Runtime - eager|" in result.output
    bundle = load_bundle(SHIPPED, "cpu")
    (image,), crops_etc = _inputs(bundle, seed=5)
    image = image[:1]  # another batch size than the export's: the batch axis is free
    detector = onnxruntime.InferenceSession(str(tmp_path / "detector.onnx"))
    got = detector.run(None, {"image": image.numpy()})
    import torch

    with torch.inference_mode():
        out = bundle.detector.network(image)
        expected = _flat([out["classification"], out["box_regression"]])
        logits = bundle.classifier(*crops_etc)
    assert max(float(abs(g - e.numpy()).max()) for g, e in zip(got, expected)) <= 1e-4
    classifier = onnxruntime.InferenceSession(str(tmp_path / "classifier.onnx"))
    (got_logits,) = classifier.run(None, {i.name: t.numpy() for i, t in zip(classifier.get_inputs(), crops_etc)})
    assert float(abs(got_logits - logits.numpy()).max()) <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "classifier.onnx")).metadata_props}
    assert json.loads(props["metadata.json"])["name"] == "radiograph-lesion"
