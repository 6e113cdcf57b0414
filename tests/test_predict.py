"""predict.py: the same detections as evaluate.py on the same images (one code path), a
folder with an unreadable file, a glob, a clear error for a foreign checkpoint."""
import json
import shutil

import numpy as np
import pytest

import evaluate
import predict
import train
from synthetic_coco import make_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch pose run on a tiny synthetic set, and its validation images."""
    root = tmp_path_factory.mktemp("predict")
    ann, images = make_dataset(root, "pose", "val", 6)
    out = root / "run"
    train.main(["--task", "pose", "--m", "2", "--ann", ann, "--images", images, "--arch", "small_dla",
                "--batch-size", "4", "--input-size", "64", "--epochs", "1", "--lr-steps", "--out", str(out)])
    return out / "ckpt.pt", ann, images


def test_predict_gives_exactly_what_evaluate_scores(run, tmp_path):
    ckpt, ann, images = run
    evaluate.main(["--checkpoint", str(ckpt), "--ann", ann, "--images", images, "--out", str(tmp_path / "eval"),
                   "--precision", "fp32"])
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())
    kept, skipped = predict.main(["--checkpoint", str(ckpt), "--source", images, "--out", str(tmp_path / "pred"),
                                  "--score-thresh", "0", "--precision", "fp32", "--ellipses"])
    assert not skipped
    files = {im["id"]: im["file_name"] for im in json.loads(open(ann).read())["images"]}
    by_file = lambda rs, key: sorted((r[key], round(r["score"], 6), tuple(np.round(r["bbox"], 4))) for r in rs)
    for r in scored:
        r["file"] = files[r["image_id"]]
    for r in kept:
        r["file"] = r["file_name"].rsplit("/", 1)[-1]
    assert len(kept) == len(scored) > 0
    assert by_file(kept, "file") == by_file(scored, "file")
    assert {"component", "alpha", "sigma", "keypoints"} <= set(kept[0])
    assert len(list((tmp_path / "pred").glob("*.jpg"))) == 6
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())[0]["score"] >= 0


def test_unreadable_and_unsupported_files_are_listed_and_skipped(run, tmp_path, capsys):
    ckpt, _, images = run
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    kept, skipped = predict.main(["--checkpoint", str(ckpt), "--source", str(folder), "--out", str(tmp_path / "p"),
                                  "--no-pictures"])
    out = capsys.readouterr().out
    assert len(skipped) == 2 and "notes.txt: not an image type" in out
    assert any("cannot read" in line and "broken.jpg" in line for line in out.splitlines())
    assert "6 images" in out and "2 files skipped" in out
    globbed, _ = predict.main(["--checkpoint", str(ckpt), "--source", f"{folder}/00000[01].jpg",
                               "--out", str(tmp_path / "g"), "--no-pictures", "--score-thresh", "0"])
    assert {r["file_name"].rsplit("/", 1)[-1] for r in globbed} == {"000000.jpg", "000001.jpg"}


def test_a_foreign_checkpoint_or_missing_source_is_one_clear_error(run, tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit, match=r"--checkpoint: .*x.pt: not a readable checkpoint"):
        predict.main(["--checkpoint", str(tmp_path / "x.pt"), "--source", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--source .*nothing_here: no such file or folder"):
        predict.main(["--checkpoint", str(run[0]), "--source", str(tmp_path / "nothing_here")])


def test_figures_draws_fig4_and_fig5_from_a_run(run, tmp_path):
    from analysis import figures
    ckpt, _, _ = run
    figures.main(["--mdn", str(ckpt.parent), "--base", str(ckpt.parent), "--out", str(tmp_path), "--examples", "2"])
    for name in ("convergence.png", "predictions.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


def test_figures_overfit_draws_the_runs_given_and_nothing_else(run, tmp_path):
    from analysis import figures
    ckpt, _, _ = run
    figures.main(["--overfit", str(ckpt.parent), "--out", str(tmp_path)])
    assert (tmp_path / "overfit.png").stat().st_size > 10_000
    assert not (tmp_path / "predictions.png").exists()
    with pytest.raises(SystemExit):
        figures.main(["--out", str(tmp_path)])          # neither --mdn nor --overfit
