"""The data path at scale (checks/coco_scale.py): a forked loader worker that reads every
record of a generated COCO file must not copy the dataset's records into its own memory
(Python objects are, page by page, as their reference counts change)."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

import coco_data as cd
from checks import coco_scale as cs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
SRC = cs.SAMPLE / "annotations" / cs.SAMPLE_ANN["det"]
N_IMAGES = 2000


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    if not SRC.is_file():
        pytest.skip(f"{cs.SAMPLE} is absent (the real COCO sample is not checked out beside the repo)")
    ann = tmp_path_factory.mktemp("scale") / "det.json"
    n_images, n_anns = cs.scale_annotations(SRC, ann, N_IMAGES, 7 * N_IMAGES)
    return ann, n_images, n_anns


def test_scaled_file_repeats_the_sample_under_new_ids(scaled):
    ann, n_images, n_anns = scaled
    data, src = json.loads(ann.read_text()), json.loads(SRC.read_text())
    assert n_images == N_IMAGES and abs(n_anns - 7 * N_IMAGES) < 0.05 * 7 * N_IMAGES
    assert len({im["id"] for im in data["images"]}) == N_IMAGES
    assert len({a["id"] for a in data["annotations"]}) == n_anns
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in src["images"]}
    assert all(sizes[im["file_name"]] == (im["width"], im["height"]) for im in data["images"])


def test_a_worker_does_not_copy_the_records_it_reads(scaled, monkeypatch):
    """One worker reads all N_IMAGES records; its private memory may not grow by more than
    a tenth of what the dataset occupies in the main process. Records held as Python dicts
    fail it: each read changes reference counts, so each page a read touches is copied."""
    ann, _, _ = scaled
    # Blank images of the annotated sizes: the records are under test, not JPEG decoding.
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in json.loads(SRC.read_text())["images"]}
    blank = {name: Image.new("RGB", size) for name, size in sizes.items()}
    monkeypatch.setattr(cd, "read_image", lambda path, what="": blank[Path(path).name])
    before = cs.memory()["rss"]
    ds = cd.CocoDataset(ann, cs.SAMPLE / "images", "det", train=True, input_size=32, color_aug=False)
    held = cs.memory()["rss"] - before
    assert held > 20, f"the dataset holds {held:.0f} MB: too little for the check to see a copy"
    r = cs.worker_growth(ds, 1, len(ds) // 50, 50, warm=2, shuffle=False, settle=0.5)
    growth = r["uss_end"][0] - r["uss_start"][0]
    print(f"dataset {held:.0f} MB in the main process; worker USS {r['uss_start'][0]:.1f} -> "
          f"{r['uss_end'][0]:.1f} MB after {r['samples_per_worker']:.0f} records")
    assert growth < held / 10, f"the worker copied {growth:.1f} MB of a {held:.0f} MB dataset"
