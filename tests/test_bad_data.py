"""Bad input to coco_data.py: annotation files and images that must raise an error naming
the file (and the record), never load as silently wrong data. Nothing here renders a
Gaussian, so these tests also run in the student copy (draw_gaussian blanked)."""
import json

import numpy as np
import pytest
from PIL import Image

import coco_data as cd
from test_coco_data import PERSON, person, write_coco


# ----------------------------------------------------------------------------- images
def test_image_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pixels = {"gray.jpg": Image.fromarray(rgb[..., 0]), "rgba.png": Image.fromarray(
        np.concatenate([rgb, rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)], -1)),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "pal.png": Image.fromarray(rgb).quantize(16)}
    images = [dict(id=i + 1, file_name=n, width=50, height=40) for i, n in enumerate(pixels)]
    ann_file, image_dir = write_coco(tmp_path, images, [], [dict(id=1, name="x")], pixels)
    ds = cd.CocoDataset(ann_file, image_dir, "det", input_size=64)
    for i, name in enumerate(pixels):
        img = ds.load_image(i + 1)
        assert img.mode == "RGB" and img.size == (50, 40), name
        assert ds[i]["input"].shape == (3, 64, 64)
    gray = np.asarray(ds.load_image(1), np.int16)
    assert np.array_equal(gray[..., 0], gray[..., 2]) and np.abs(gray[..., 0] - rgb[..., 0]).mean() < 8
    assert np.array_equal(np.asarray(ds.load_image(2)), rgb)          # alpha dropped, RGB exact
    assert np.abs(np.asarray(ds.load_image(3), np.int16) - rgb).mean() < 8


def test_bad_images_raise_or_skip(tmp_path):
    images = [dict(id=11, file_name="ok.png", width=32, height=32),
              dict(id=12, file_name="missing.png", width=32, height=32),
              dict(id=13, file_name="garbage.jpg", width=32, height=32),
              dict(id=14, file_name="wrong_size.png", width=40, height=32),
              dict(id=15, file_name="truncated.jpg", width=32, height=32)]
    small = Image.new("RGB", (32, 32), (200, 10, 10))
    ann_file, image_dir = write_coco(tmp_path, images, [], [dict(id=1, name="x")],
                                     {"wrong_size.png": small})
    (image_dir / "missing.png").unlink()
    (image_dir / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    jpeg = (image_dir / "truncated.jpg").read_bytes()
    (image_dir / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    ds = cd.CocoDataset(ann_file, image_dir, "det", input_size=32)
    for index, (name, img_id) in enumerate([("missing.png", 12), ("garbage.jpg", 13),
                                            ("wrong_size.png", 14), ("truncated.jpg", 15)], start=1):
        with pytest.raises(cd.BadImageError, match=rf"image id {img_id}:.*{name}"):
            ds[index]
    skip = cd.CocoDataset(ann_file, image_dir, "det", input_size=32, skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipped a bad image"):
        s = skip[1]
    assert s["image_id"] == 11 and skip.num_bad_images == 4           # 12 to 15, then 11


# ----------------------------------------------------------------------------- annotation files
def test_bad_annotation_json_errors_name_the_problem(tmp_path):
    good = dict(info={}, images=[dict(id=1, file_name="a.png", width=8, height=8)],
                categories=[PERSON], annotations=[person(1, 1, 4, 4)])
    cases = [("{not json", "not valid JSON"),
             (dict(good, images=[{"id": 1, "width": 8, "height": 8}]), r"images\[0\] is missing \['file_name'\]"),
             ({k: v for k, v in good.items() if k != "categories"}, "missing list 'categories'"),
             (dict(good, annotations=[dict(person(1, 1, 4, 4), id=5, image_id=99)]),
              "annotation id 5 points to unknown image id 99"),
             (dict(good, annotations=[dict(person(1, 1, 4, 4), id=6, category_id=2)]),
              "annotation id 6 points to unknown category id 2"),
             (dict(good, annotations=[dict(person(1, 1, 4, 4), id=7, keypoints=[1, 2, 2] * 16)]),
              "annotation id 7: keypoints must have 3 \\* 17 numbers"),
             (dict(good, annotations=[dict(image_id=1, category_id=1, id=8, bbox=[1, 2])]),
              "annotation id 8: bbox must be 4 numbers")]
    for i, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(ValueError, match=message) as err:
            cd.load_coco(path)
        assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cd.load_coco(tmp_path / "nope.json")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="val2017"):
        cd.coco2017_paths(tmp_path, "pose", "val")
    (tmp_path / "val2017").mkdir()
    assert cd.coco2017_paths(tmp_path, "pose", "val")[1] == tmp_path / "val2017"
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        cd.coco2017_paths(tmp_path, "det", "train")


