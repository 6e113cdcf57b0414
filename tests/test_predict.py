"""predict.py: the same detections as evaluate.py on the same images (one code path), a
folder with an unreadable file, a glob, a clear error for a foreign checkpoint; outputs that
would land on inputs, inputs that would share a picture, results kept when the run dies or a
picture cannot be drawn, phone photos (EXIF orientation), bad flag values."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

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


# ----------------------------------------------------------------------------- the user's files
def test_outputs_never_land_on_inputs(run, tmp_path):
    ckpt, _, images = run
    photos = tmp_path / "photos"
    shutil.copytree(images, photos)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(SystemExit, match=rf"--out {photos} is the --source folder {photos}"):
        predict.main(["--checkpoint", str(ckpt), "--source", str(photos), "--out", str(photos)])
    (photos / "000000.jpg.jpg").write_bytes(before["000000.jpg"])   # an input named as a picture would be
    with pytest.raises(SystemExit, match=rf"the output {photos / '000000.jpg.jpg'} would be written over the input"):
        predict.main(["--checkpoint", str(ckpt), "--source", f"{photos}/*.jpg", "--out", str(photos)])
    assert {p.name: p.read_bytes() for p in photos.iterdir() if p.name != "000000.jpg.jpg"} == before
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(SystemExit, match="^2$"):
        predict.parse_args(["--checkpoint", str(ckpt), "--source", str(photos), "--out", str(tmp_path / "a_file")])
    with pytest.raises(SystemExit, match=r"--out .*a_file/sub: cannot write there"):   # as a read-only folder
        predict.main(["--checkpoint", str(ckpt), "--source", str(photos), "--out", str(tmp_path / "a_file" / "sub")])
    assert (tmp_path / "a_file").read_text() == "mine"


def test_every_input_gets_its_own_picture(run, tmp_path):
    """x.png next to x.jpg, and a/x.jpg next to b/x.jpg (a glob over two folders)."""
    ckpt, _, images = run
    src = tmp_path / "src"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        shutil.copy(f"{images}/000000.jpg", src / sub / "x.jpg")
    Image.open(f"{images}/000001.jpg").save(src / "a" / "x.png")
    out = tmp_path / "out"
    kept, skipped = predict.main(["--checkpoint", str(ckpt), "--source", f"{src}/*/x.*", "--out", str(out),
                                  "--score-thresh", "0"])
    pictures = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    assert not skipped and pictures == ["a/x.jpg.jpg", "a/x.png.jpg", "b/x.jpg.jpg"]
    assert {r["file_name"] for r in kept} == {str(src / "a" / "x.jpg"), str(src / "a" / "x.png"), str(src / "b" / "x.jpg")}


def test_results_are_written_as_they_come_and_an_undrawable_picture_is_skipped(run, tmp_path, monkeypatch, capsys):
    ckpt, _, images = run
    draw = predict.draw

    def dies_at_the_third(image, results, info, path, *args):
        if path.name == "000002.jpg.jpg":      # the run dies here: what was done must be on disk
            raise KeyboardInterrupt
        draw(image, results, info, path, *args)
    monkeypatch.setattr(predict, "draw", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["--checkpoint", str(ckpt), "--source", images, "--out", str(tmp_path / "dies"),
                      "--score-thresh", "0"])
    lines = [json.loads(line) for line in (tmp_path / "dies" / "predictions.jsonl").read_text().splitlines()]
    assert {r["file_name"].rsplit("/", 1)[-1] for r in lines} == {"000000.jpg", "000001.jpg", "000002.jpg"}

    def too_tall(image, results, info, path, *args):
        if path.name == "000001.jpg.jpg":
            raise OSError("Maximum supported image dimension is 65500 pixels")
        draw(image, results, info, path, *args)
    monkeypatch.setattr(predict, "draw", too_tall)
    out = tmp_path / "out"
    kept, skipped = predict.main(["--checkpoint", str(ckpt), "--source", images, "--out", str(out),
                                  "--score-thresh", "0"])
    assert len(skipped) == 1 and "000001.jpg: its detections are kept, its picture cannot be drawn (OSError" in skipped[0]
    assert "skipped: " in capsys.readouterr().out
    assert len(list(out.glob("*.jpg"))) == 6 - 1 and any(r["file_name"].endswith("000001.jpg") for r in kept)
    assert json.loads((out / "predictions.json").read_text()) == kept
    assert [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()] == kept


def test_an_extreme_aspect_image_is_drawn(run, tmp_path):
    """100 x 20000 px: at 6 in wide its figure would be 120000 px high, past JPEG's 65500."""
    ckpt, _, _ = run
    Image.new("RGB", (100, 20000), (90, 120, 60)).save(tmp_path / "tall.png")
    kept, skipped = predict.main(["--checkpoint", str(ckpt), "--source", str(tmp_path / "tall.png"),
                                  "--out", str(tmp_path / "out")])
    assert not skipped and max(Image.open(tmp_path / "out" / "tall.png.jpg").size) <= 65500


def test_a_phone_photo_is_predicted_upright(run, tmp_path):
    """A photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view):
    predictions equal those on the upright pixels, in the upright photo's coordinates."""
    ckpt, _, images = run
    upright = Image.open(f"{images}/000002.jpg").crop((0, 0, 64, 48))        # not square: a rotation shows
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    upright_again = Image.open(tmp_path / "phone.jpg").transpose(Image.Transpose.ROTATE_270)
    upright_again.save(tmp_path / "decoded.png")       # the same pixels the JPEG decoder gives, upright
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--score-thresh", "0", "--no-pictures"]
    phone, _ = predict.main(args + ["--source", str(tmp_path / "phone.jpg")])
    plain, _ = predict.main(args + ["--source", str(tmp_path / "decoded.png")])
    assert len(phone) == len(plain) > 0
    for a, b in zip(phone, plain):
        assert a["bbox"] == pytest.approx(b["bbox"]) and a["score"] == pytest.approx(b["score"])


@pytest.mark.parametrize("flag,value,message", [
    ("--topk", "0", "argument --topk: must be > 0, got 0"),
    ("--input-size", "-32", "argument --input-size: must be > 0, got -32"),
    ("--score-thresh", "1.5", "argument --score-thresh: must be between 0 and 1, got 1.5"),
    ("--device", "tpu", "argument --device: 'tpu' is not a device"),
    ("--device", "cuda:99", "argument --device: cuda:99"),
] + ([] if torch.cuda.is_available() else [("--device", "cuda", "argument --device: cuda: this torch build or "
                                                               "machine has no CUDA GPU")]))
def test_bad_flag_values_are_refused_at_parse_time(flag, value, message, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        predict.parse_args(["--checkpoint", "c.pt", "--source", "x", flag, value])
    assert message in capsys.readouterr().err
