"""The data path at scale (checks/coco_scale.py): a forked loader worker that reads every
record of a generated COCO file must not copy the dataset's records into its own memory
(Python objects are, page by page, as their reference counts change)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checks import coco_scale as cs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
SRC = cs.SAMPLE / "annotations" / cs.SAMPLE_ANN["det"]
N_IMAGES = 2000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    if not SRC.is_file():
        pytest.skip(f"{cs.SAMPLE} is absent (the real COCO sample is not checked out beside the repo)")
    ann = tmp_path_factory.mktemp("scale") / f"det_{N_IMAGES}_{7 * N_IMAGES}.json"   # the name main() looks for
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


def test_a_worker_does_not_copy_the_records_it_reads(scaled, tmp_path):
    """One worker reads every record of the file (one epoch, black images); its private
    memory may not grow by more than a tenth of what loading the records took in the main
    process. Records held as Python dicts fail it: each read changes reference counts, so
    each page a read touches is copied. Run in a fresh process: memory that earlier tests
    freed would hide the main process's growth."""
    ann, n_images, n_anns = scaled
    args = ["--images", str(N_IMAGES), "--annotations", str(7 * N_IMAGES), "--workers", "1", "--batches", "0",
            "--batch-size", "25", "--input-size", "32", "--blank-images", "--out", str(ann.parent)]
    code = f"import json; from checks import coco_scale as cs; m = cs.main({args!r}); print(json.dumps(m))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    row = m["rows"][0]
    growth = row["uss_end"][0] - row["uss_start"][0]
    print(f"records {m['load_mb']:.0f} MB in the main process; worker USS {row['uss_start'][0]:.1f} -> "
          f"{row['uss_end'][0]:.1f} MB after {row['samples_per_worker']:.0f} records")
    assert row["samples_per_worker"] > 0.9 * n_images
    assert m["load_mb"] > 20, f"the records take {m['load_mb']:.0f} MB: too little for the check to see a copy"
    assert growth < m["load_mb"] / 10, f"the worker copied {growth:.1f} MB of {m['load_mb']:.0f} MB of records"
