"""The evaluation harness on the labelled real samples shipped in demo_data/: adapters read what the files hold,
tasks beat their chance level where the data allow and repeat exactly for a seed, a checkpoint, its
consolidation and its HF export score identically, and the plots are real PNGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from ringmoe.checkpoint.consolidate import consolidate
from ringmoe.config.evaluation import load_eval_config
from ringmoe.config.schema import load_model_config
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.eval.datasets import ADAPTERS, IGNORE
from ringmoe.eval.datasets.eolearn import LULC_CLASSES
from ringmoe.eval.run import evaluate
from ringmoe.export.huggingface import export_huggingface
from ringmoe.models.factory import build_model
from tests.checkpoint.synthetic import write_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo_data"
EOLEARN = DEMO / "sentinel2_l1c_timeseries_eolearn"
EVAL_CONFIG = REPO / "configs" / "eval" / "demo.yaml"
TINY = REPO / "configs" / "tiny.yaml"


def run_eval(tmp_path: Path, encoders: list[str], *overrides: str):
    listed = ",".join(encoders)
    config = load_eval_config(EVAL_CONFIG, [f"encoders=[{listed}]", f"output_dir={tmp_path}", *overrides])
    return evaluate(config, EVAL_CONFIG.parent)


def test_bigearthnet_adapter_reads_patches_and_their_labels():
    roots = {"sentinel2_l2a": DEMO / "sentinel2_l2a_bigearthnet", "sentinel1_grd": DEMO / "sentinel1_grd_bigearthnet"}
    s2 = ADAPTERS["bigearthnet"](roots["sentinel2_l2a"])
    s1 = ADAPTERS["bigearthnet"](roots["sentinel1_grd"], sensor="sentinel1_grd")
    assert (s2.modality, tuple(s2.images.shape)) == ("multispectral", (6, 4, 120, 120))
    assert (s1.modality, tuple(s1.images.shape)) == ("sar_amplitude", (6, 3, 120, 120))
    for data in (s2, s1):
        for key, row in zip(data.keys, data.labels):
            sidecar = roots[data.sensor] / key / f"{key}_labels_metadata.json"
            names = {data.class_names[i] for i in torch.nonzero(row).flatten().tolist()}
            assert names == set(json.loads(sidecar.read_text())["labels"])

    # S1 and S2 patches of one place (names ending in the same _<col>_<row>) carry the same labels.
    def by_place(data):
        return {"_".join(k.split("_")[-2:]): row.tolist() for k, row in zip(data.keys, data.labels)}

    assert by_place(s2) == by_place(s1) and len(by_place(s2)) == 6
    assert sorted(s2.groups.tolist()) == list(range(6))


def test_eolearn_adapters_tile_label_and_count_what_they_leave_out():
    scenes = ADAPTERS["eolearn_lulc"](EOLEARN, kind="scene", tile=16)
    lulc = np.load(EOLEARN / "TestEOPatch" / "mask_timeless" / "LULC.npy", allow_pickle=False)[..., 0]
    # 36 tiles of 16 px on each of 5 dates; the 2 cloud-flagged dates are left out and counted.
    assert len(scenes) == 3 * 36 and scenes.skipped == {"clouds or no data": 2 * 36}
    assert scenes.groups.unique().numel() == 36 and (scenes.groups.bincount() == 3).all()
    first = scenes.keys.index(next(k for k in scenes.keys if k.endswith("_y0_x0")))
    majority = np.bincount(lulc[:16, :16][lulc[:16, :16] > 0]).argmax()
    assert scenes.class_names[int(scenes.labels[first])] == LULC_CLASSES[int(majority)]

    segmentation = ADAPTERS["eolearn_lulc"](EOLEARN, kind="segmentation", tile=32)
    assert tuple(segmentation.labels.shape) == (27, 32, 32)
    corner = [i for i, k in enumerate(segmentation.keys) if k.endswith("_y0_x0")]
    assert len(corner) == 3  # one per cloud-free date, all valid there: only "no data" labels are ignored
    for index in corner:
        assert torch.equal(segmentation.labels[index] == IGNORE, torch.from_numpy(lulc[:32, :32] == 0))

    change = ADAPTERS["eolearn_change"](EOLEARN, tile=32, change_threshold=0.1)
    scenes_raw = np.load(EOLEARN / "REFERENCE_SCENES.npy", allow_pickle=False)
    ndvi = (scenes_raw[..., 7] - scenes_raw[..., 3]) / (scenes_raw[..., 7] + scenes_raw[..., 3])
    # Frames 4, 3, 2 are the cloud-free dates 2015-07-11, 08-30, 09-09; the first pair, first tile:
    expected = np.abs(ndvi[3] - ndvi[4])[:32, :32] > 0.1
    assert change.keys[0] == "2015-07-11_2015-08-30_y0_x0"
    assert torch.equal(change.labels[0], torch.from_numpy(expected).long())
    assert len(change) == 3 * 9 and 0.01 < float((change.labels == 1).float().mean()) < 0.5


def test_class_folders_read_eurosat_style_geotiffs_like_the_pack(tmp_path):
    """Tiles of the real L1C stack written as 13-band GeoTIFFs in EuroSAT_MS band order (B8A last) into one
    folder per class read back through data_pipeline to the same normalized images."""
    scenes = ADAPTERS["eolearn_lulc"](EOLEARN, kind="scene", tile=16)
    raw = np.load(EOLEARN / "REFERENCE_SCENES.npy", allow_pickle=False)
    eurosat_order = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8]  # B01..B08, B09, B10, B11, B12, B8A
    first_date = [i for i, k in enumerate(scenes.keys) if k.startswith("2015-07-11")]
    wanted = [i for c in (0, 1) for i in [j for j in first_date if scenes.labels[j] == c][:2]]  # 2 of each class
    for index in wanted:
        key, label = scenes.keys[index], scenes.class_names[int(scenes.labels[index])]
        y, x = (int(part[1:]) for part in key.split("_")[1:])
        tile = (raw[4, y : y + 16, x : x + 16][..., eurosat_order] * 10000).round().astype(np.uint16)
        (tmp_path / label).mkdir(exist_ok=True)
        profile = dict(driver="GTiff", height=16, width=16, count=13, dtype="uint16", crs="EPSG:32633")
        with rasterio.open(tmp_path / label / f"{key}.tif", "w", transform=from_origin(0, 0, 10, 10), **profile) as f:
            f.write(tile.transpose(2, 0, 1))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class: class folder holds no"):
        ADAPTERS["class_folders"](
            tmp_path, sensor="sentinel2_l1c", band_indexes={"B02": 2, "B03": 3, "B04": 4, "B08": 8}
        )
    (tmp_path / "empty_class").rmdir()
    folders = ADAPTERS["class_folders"](
        tmp_path, sensor="sentinel2_l1c", band_indexes={"B02": 2, "B03": 3, "B04": 4, "B08": 8}
    )
    assert folders.class_names == ["forest", "grassland"] and folders.labels.tolist() == [0, 0, 1, 1]
    for key, image in zip(folders.keys, folders.images):
        original = scenes.images[scenes.keys.index(Path(key).stem)]
        assert torch.allclose(image, original, atol=1e-4)  # uint16 rounding of reflectance * 10000


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    patch = tmp_path / "ben" / "S2A_MSIL2A_20170613T101031_87_48"
    shutil.copytree(DEMO / "sentinel2_l2a_bigearthnet" / patch.name, patch)
    labels_file = patch / f"{patch.name}_labels_metadata.json"
    labels_file.write_text(json.dumps({"labels": ["Moon dust"]}))
    with pytest.raises(DataError, match=f"{labels_file}: labels \\['Moon dust'\\] are not in BigEarthNet"):
        ADAPTERS["bigearthnet"](tmp_path / "ben")
    labels_file.unlink()
    with pytest.raises(DataError, match=f"{labels_file}: labels of BigEarthNet patch"):
        ADAPTERS["bigearthnet"](tmp_path / "ben")

    broken = tmp_path / "eolearn"
    shutil.copytree(EOLEARN, broken)
    np.save(broken / "TestEOPatch" / "mask_timeless" / "LULC.npy", np.zeros((101, 100), dtype=np.uint16))
    with pytest.raises(DataError, match="LULC.npy: expected 3 axes, found shape"):
        ADAPTERS["eolearn_lulc"](broken)

    config_file = tmp_path / "eval.yaml"
    for task, problem in [
        (
            "{dataset: eolearn_lulc, root: %s, options: {tiles: 8}}",
            "tasks\\[0\\].options .* unexpected keyword argument 'tiles'",
        ),
        ("{dataset: eurosat, root: %s}", "tasks\\[0\\].dataset 'eurosat' not in"),
        ("{dataset: eolearn_lulc, rot: %s}", "eval.yaml: key 'rot': Key 'rot' not in 'EvalTaskConfig'"),
    ]:
        config_file.write_text(f"encoders: [pixels]\ntasks: [{task % EOLEARN}]\noutput_dir: {tmp_path / 'out'}\n")
        with pytest.raises(ConfigError, match=problem):
            evaluate(load_eval_config(config_file), tmp_path)


def test_tasks_beat_chance_where_the_data_allow_and_repeat_exactly(tmp_path):
    first = run_eval(tmp_path / "a", ["pixels"], "plots=false")
    again = run_eval(tmp_path / "b", ["pixels"], "plots=false")
    assert [r.__dict__ for r in first.results] == [r.__dict__ for r in again.results]
    rows = {(r.task, r.metric): r for r in first.results}
    # 12 cross-validated rows of the pack's sets, 4 fixed-split rows of the demo's EuroSAT subset
    assert len(rows) == 16 and all(r.std >= 0 for r in rows.values())
    assert sorted(r.folds for r in rows.values()) == [0] * 4 + [3] * 12
    assert all(r.folds == 0 for (task, _), r in rows.items() if task.startswith("EuroSAT"))
    beat = {
        ("eo-learn LULC scene (16 px) (linear probe)", "balanced accuracy"),
        ("eo-learn LULC segmentation (32 px) (linear decoder)", "mIoU"),
        ("eo-learn NDVI change > 0.1 (32 px) (linear decoder)", "F1 (changed)"),
    }
    for key in beat:
        assert rows[key].mean > rows[key].chance + 0.05, rows[key]
    assert rows[("eo-learn LULC scene (16 px) (kNN)", "accuracy")].n == 108
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| chance | n | folds |" in table and "left out {'clouds or no data': 72}" in table


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    """One set of real weights as a DeepSpeed checkpoint, its consolidation and its HF export."""
    root = tmp_path_factory.mktemp("sources")
    config = load_model_config(TINY)
    tag = root / "global_step1"
    write_synthetic_checkpoint(tag, config, state=build_model(config, seed=5).state_dict())
    consolidated = consolidate(tag, root / "consolidated")
    hf = export_huggingface(consolidated, root / "hf")
    return root, [str(tag), str(consolidated), str(hf)]


def test_hf_export_consolidated_and_checkpoint_score_identically(three_sources):
    root, sources = three_sources
    report = run_eval(root / "eval", sources + [f"random:{TINY}"])
    by_encoder: dict[str, list[tuple]] = {}
    for r in report.results:
        by_encoder.setdefault(r.encoder, []).append((r.task, r.metric, r.mean, r.std, r.chance, r.n))
    names = ["checkpoint global_step1", "consolidated consolidated", "huggingface hf"]
    assert len(by_encoder[names[0]]) == 16
    assert by_encoder[names[0]] == by_encoder[names[1]] == by_encoder[names[2]]
    assert by_encoder[names[0]] != by_encoder["random init (tiny, seed 0)"]  # other weights, other scores


def test_plots_are_valid_non_empty_pngs(three_sources):
    from PIL import Image

    root, _ = three_sources
    report = run_eval(root / "plots_run", ["pixels", f"random:{TINY}"], "tsne=true")  # the demo config skips t-SNE
    kinds = {p.name.rsplit("_", 1)[-1] for p in report.plots}
    assert kinds == {"class.png", "confusion.png", "pca.png", "tsne.png"}
    assert any(p.name == "sensors_tsne.png" for p in report.plots)  # S2 L2A, S1 GRD and S2 L1C features
    for path in report.plots:
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.load()
            assert image.size[0] >= 64 and image.size[1] >= 32, path
            assert len(image.getcolors(maxcolors=1 << 16) or []) > 3, path  # drawn, not blank


def test_tasks_on_sets_with_known_answers():
    """Scene classes and changed pixels written into the pixels themselves: the probes find them exactly, and
    the chance levels are the hand-computed ones (majority share; F1 of flagging everything = 2p / (1 + p))."""
    from ringmoe.config.evaluation import EvalConfig
    from ringmoe.eval.datasets import LabelledSet
    from ringmoe.eval.features import load_encoder
    from ringmoe.eval.tasks import change_detection, scene_classification

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 8 + [1] * 4)
    bright = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[labels]  # class a: channels 0-1, b: 2-3
    images = torch.rand(12, 4, 16, 16, generator=generator) * 0.1 + bright.view(12, 4, 1, 1) * 0.5
    scenes = LabelledSet(
        "toy scenes", "scene", "multispectral", "toy", images, labels, torch.arange(12), ["a", "b"], []
    )
    config = EvalConfig(encoders=["pixels"], folds=4)
    rows = {
        r.task + " / " + r.metric: r for r in scene_classification(load_encoder("pixels:16"), scenes, config).results
    }
    assert rows["toy scenes (linear probe) / accuracy"].mean == 1.0
    assert rows["toy scenes (kNN) / balanced accuracy"].mean == 1.0
    assert rows["toy scenes (linear probe) / accuracy"].chance == pytest.approx(8 / 12)

    before = torch.rand(6, 4, 16, 16, generator=generator) * 0.05
    changed = torch.zeros(6, 16, 16, dtype=torch.long)
    changed[:, :8, :8] = 1  # a quarter of every tile
    after = before + changed.unsqueeze(1) * 0.8
    pairs = LabelledSet(
        "toy change", "change", "multispectral", "toy", before, changed, torch.arange(6), ["no", "yes"], []
    )
    pairs.images_after = after
    result = {r.metric: r for r in change_detection(load_encoder("pixels:16"), pairs, config).results}
    assert result["F1 (changed)"].mean > 0.9
    assert result["F1 (changed)"].chance == pytest.approx(2 * 0.25 / 1.25)
    assert result["IoU (changed)"].chance == pytest.approx(0.25)


def test_cli_prints_the_table_and_names_a_bad_key(tmp_path, capsys):
    from ringmoe.cli.main import main

    args = ["eval", "--config", str(EVAL_CONFIG), "encoders=[pixels]", f"output_dir={tmp_path}", "plots=false"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| eo-learn LULC scene (16 px) (kNN) | pixel statistics (64 px) | accuracy |" in printed
    assert f"results: {tmp_path / 'results.md'}" in printed and (tmp_path / "config.yaml").is_file()
    assert main(["eval", "--config", str(EVAL_CONFIG), "fold=4"]) == 2
    assert "key 'fold'" in capsys.readouterr().err


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "real").is_dir(), reason="shared real-sample pack absent")
def test_the_shared_pack_config_reads_the_same_sets_as_the_demo_copy():
    from ringmoe.eval.run import load_task_data

    shared_config = REPO / "configs" / "eval" / "real_samples.yaml"
    pairs = zip(load_eval_config(shared_config).tasks, load_eval_config(EVAL_CONFIG).tasks)
    for index, (shared, demo) in enumerate(pairs):
        a, b = load_task_data(shared, index, shared_config.parent), load_task_data(demo, index, EVAL_CONFIG.parent)
        assert (a.name, a.keys, a.class_names) == (b.name, b.keys, b.class_names)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_an_images_features_do_not_depend_on_its_batch(three_sources):
    """Routing is dropless in eval mode, so no token of an image is dropped because of the images beside it:
    its features are the same alone, among other companions and in batches of other sizes, from the checkpoint,
    its consolidation and its HF export alike (with a capacity limit they moved by up to 0.28). Same up to float
    rounding, not bitwise: an expert's matmul runs over the tokens routed to it, and the BLAS kernel for that
    shape may sum in another order (seen: 7e-7 at a largest value of 3.8)."""
    from ringmoe.eval.features import load_encoder
    from tests.tolerances import assert_close_up_to_rounding, loss_rtol

    rtol = loss_rtol(load_model_config(TINY))

    _, sources = three_sources
    patches = ADAPTERS["bigearthnet"](DEMO / "sentinel2_l2a_bigearthnet").images  # (6, 4, 120, 120) real S2
    windows = torch.cat([patches[..., y : y + 64, x : x + 64] for y in (0, 56) for x in (0, 56)])  # 24 images
    image = windows[:1]
    batches = [windows[:16], torch.cat([image, windows[9:24]]), windows[:5], torch.cat([image, image])]
    for source in sources:
        encoder = load_encoder(source)
        alone = encoder.stages(image, "multispectral")
        for batch in batches:
            for stage, (got, expected) in enumerate(zip(encoder.stages(batch, "multispectral"), alone)):
                assert_close_up_to_rounding(got[:1], expected, rtol, f"{encoder.name} stage {stage} batch {len(batch)}")
