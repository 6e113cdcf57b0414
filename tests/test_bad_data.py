"""Bad input to coco_data.py: annotation files and images that must raise an error naming
the file (and the record), never load as silently wrong data (ids and fields that COCOeval
would mis-score included); phone photos read upright (EXIF orientation). Nothing here renders a
Gaussian, so these tests also run in the student copy (draw_gaussian blanked)."""
import json

import numpy as np
import pytest
from PIL import Image

import annotations as an
import coco_data as cd
import transforms as tf
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



def test_sixteen_bit_images_scale_and_float_or_int32_are_refused(tmp_path):
    """16-bit grey (PNG I;16, TIFF I;16 and big-endian I;16B) -> 8 bits by round(v / 257),
    the full 16-bit range onto 0..255. Before: convert("RGB") clipped every value > 255 to
    white. 32-bit int ('I') and float ('F') have no range to scale by: refused by name."""
    g = (np.arange(40 * 50).reshape(40, 50) * 32.77).astype(np.uint16)   # 0 .. 65500
    g[0, :3] = [0, 65535, 128]
    pixels = {"g16.png": Image.fromarray(g), "g16.tif": Image.fromarray(g),
              "g16b.tif": Image.fromarray(g.astype(">u2")),
              "i32.tif": Image.fromarray(g.astype(np.int32)),
              "f32.tif": Image.fromarray(g.astype(np.float32) / 65535)}
    assert [im.mode for im in pixels.values()] == ["I;16", "I;16", "I;16B", "I", "F"]
    images = [dict(id=i + 1, file_name=n, width=50, height=40) for i, n in enumerate(pixels)]
    ann_file, image_dir = write_coco(tmp_path, images, [], [dict(id=1, name="x")], pixels)
    ds = cd.CocoDataset(ann_file, image_dir, "det", input_size=64)
    expected = np.floor(g / 257 + 0.5).astype(np.uint8)
    assert expected[0, :3].tolist() == [0, 255, 0] and expected.max() == 255
    for img_id in (1, 2, 3):
        assert Image.open(image_dir / images[img_id - 1]["file_name"]).mode in ("I;16", "I;16B")
        img = ds.load_image(img_id)
        assert img.mode == "RGB" and img.size == (50, 40)
        rgb = np.asarray(img)
        assert all(np.array_equal(rgb[..., c], expected) for c in range(3)), img_id
    for img_id, name, mode in ((4, "i32.tif", "I"), (5, "f32.tif", "F")):
        with pytest.raises(tf.BadImageError, match=rf"image id {img_id}: {image_dir / name}: "
                                                   rf"mode '{mode}'.*convert it to 8 bits"):
            ds.load_image(img_id)

def exif_photo(path, upright, orientation=6):
    """Save PIL `upright` as a phone stores it: pixels turned so that EXIF orientation
    `orientation` (6: rotate 90 degrees clockwise to view) shows them upright."""
    stored = upright.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
                                3: Image.Transpose.ROTATE_180}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif)
    return stored


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)   # 6 wide, 4 high
    exif_photo(tmp_path / "phone.png", upright, orientation)
    image = tf.read_image(tmp_path / "phone.png")
    assert image.size == (6, 4) and np.array_equal(np.asarray(image), np.asarray(upright))
    assert image.info["orientation"] == orientation
    upright.save(tmp_path / "plain.png")
    assert tf.read_image(tmp_path / "plain.png").info["orientation"] == 1


def test_the_size_check_names_exif_when_it_explains_a_mismatch(tmp_path):
    """A set annotated on the stored (sideways) pixels of phone photos: the photo is read
    upright, so its size disagrees, and the message says that EXIF is why."""
    upright = Image.fromarray(np.full((40, 60, 3), 90, np.uint8))
    data = _good()
    data["images"] = [dict(id=1, file_name="a.png", width=40, height=60)]   # the stored, sideways size
    data["annotations"] = [dict(data["annotations"][0], bbox=[1, 2, 10, 20])]
    ann_file, image_dir = write_coco(tmp_path, data["images"], data["annotations"], data["categories"])
    exif_photo(image_dir / "a.png", upright)
    ds = cd.CocoDataset(ann_file, image_dir, "pose")
    with pytest.raises(tf.BadImageError, match=r"image id 1: .*a.png is 60x40 once its EXIF orientation 6 is "
                                               r"applied .*the stored pixels are 40x60.*the annotations say 40x60"):
        ds.load_image(1)
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(image_dir / "a.png")   # no tag: the plain message
    with pytest.raises(tf.BadImageError, match=r"a.png is 40x30, the annotations say 40x60") as err:
        ds.load_image(1)
    assert "EXIF" not in str(err.value)


@pytest.mark.parametrize("hold", [False, True])
def test_bad_images_raise_or_skip(tmp_path, hold):
    """As read from the files, and with hold_images (which holds only the readable images)."""
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
    if hold:
        ds.hold_images()
    for index, (name, img_id) in enumerate([("missing.png", 12), ("garbage.jpg", 13),
                                            ("wrong_size.png", 14), ("truncated.jpg", 15)], start=1):
        with pytest.raises(tf.BadImageError, match=rf"image id {img_id}:.*{name}"):
            ds[index]
    skip = cd.CocoDataset(ann_file, image_dir, "det", input_size=32, skip_bad_images=True)
    if hold:
        skip.hold_images()
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
            an.load_coco(path)
        assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        an.load_coco(tmp_path / "nope.json")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="val2017"):
        an.coco2017_paths(tmp_path, "pose", "val")
    (tmp_path / "val2017").mkdir()
    assert an.coco2017_paths(tmp_path, "pose", "val")[1] == tmp_path / "val2017"
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        an.coco2017_paths(tmp_path, "det", "train")




def _good():
    """A valid two-image pose file (annotation ids 7 and 8) to break one number at a time."""
    images = [dict(id=1, file_name="a.png", width=64, height=48),
              dict(id=2, file_name="b.png", width=64, height=48)]
    anns = [dict(person(1, 2, 30, 40, {"nose": (10, 12), "left_wrist": (20, 30)}), id=7, area=1200),
            dict(person(5, 5, 20, 20), id=8, image_id=2, area=400, iscrowd=0)]
    return dict(info={}, images=images, annotations=anns, categories=[dict(PERSON)])


def _broken(edit):
    """_good() with edit(data) applied (edit changes it in place)."""
    data = _good()
    edit(data)
    return data


def _set(kind, index, field, value, at=None):
    def edit(data):
        rec = data[kind][index]
        if at is None:
            rec[field] = value
        else:
            rec[field][at] = value
    return edit


NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [  # (edit, expected message); json.dumps writes NaN / Infinity, which json reads
    (_set("annotations", 0, "keypoints", NAN, 0), r"annotation id 7: keypoints must be"),
    (_set("annotations", 1, "keypoints", INF, 4), r"annotation id 8: keypoints must be"),
    (_set("annotations", 0, "keypoints", -INF, 5), r"annotation id 7: keypoints must be"),
    (_set("annotations", 1, "keypoints", None, 3), r"annotation id 8: keypoints must be"),
    (_set("annotations", 0, "keypoints", "12", 0), r"annotation id 7: keypoints must be"),
    (_set("annotations", 0, "keypoints", 10 ** 400, 1), r"annotation id 7: keypoints must be"),
    (_set("annotations", 0, "bbox", NAN, 0), r"annotation id 7: bbox must be 4 numbers"),
    (_set("annotations", 1, "bbox", INF, 2), r"annotation id 8: bbox must be 4 numbers"),
    (_set("annotations", 1, "bbox", None, 1), r"annotation id 8: bbox must be 4 numbers"),
    (_set("annotations", 0, "bbox", "30", 2), r"annotation id 7: bbox must be 4 numbers"),
    (_set("annotations", 1, "bbox", -20, 2), r"annotation id 8: bbox must be .*w, h >= 0"),
    (_set("annotations", 0, "bbox", -0.5, 3), r"annotation id 7: bbox must be .*w, h >= 0"),
    (_set("annotations", 0, "area", NAN), r"annotation id 7: area must be"),
    (_set("annotations", 1, "area", -400), r"annotation id 8: area must be .*>= 0"),
    (_set("annotations", 1, "area", "400"), r"annotation id 8: area must be"),
    (_set("annotations", 0, "num_keypoints", NAN), r"annotation id 7: num_keypoints must be"),
    (_set("annotations", 0, "num_keypoints", -1), r"annotation id 7: num_keypoints must be"),
    (_set("annotations", 1, "iscrowd", NAN), r"annotation id 8: iscrowd must be 0 or 1"),
    (_set("annotations", 1, "iscrowd", 2), r"annotation id 8: iscrowd must be 0 or 1"),
    (_set("images", 1, "width", NAN), r"image id 2: width must be"),
    (_set("images", 0, "height", -48), r"image id 1: height must be .*> 0"),
    (_set("images", 0, "width", 0), r"image id 1: width must be .*> 0"),
    (_set("images", 1, "height", "48"), r"image id 2: height must be"),
]


def _refused(path, edit, message):
    """The good file with edit applied, written to path: load_coco refuses it with message,
    the error starting with the file's path."""
    path.write_text(json.dumps(_broken(edit)))
    with pytest.raises(ValueError, match=message) as err:
        an.load_coco(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", range(len(BAD_NUMBERS)))
def test_numbers_must_be_finite_errors_name_file_id_and_field(tmp_path, case):
    _refused(tmp_path / "ann.json", *BAD_NUMBERS[case])


def test_nan_bbox_fails_at_load_not_in_rendering(tmp_path):
    """Before: CocoDataset loaded it and rendering failed with 'cannot convert float NaN to
    integer', naming no file."""
    data = _broken(_set("annotations", 0, "bbox", NAN, 1))
    images = [dict(im) for im in data["images"]]
    ann_file, image_dir = write_coco(tmp_path, images, data["annotations"], data["categories"])
    with pytest.raises(ValueError, match=rf"{ann_file}: annotation id 7: bbox"):
        cd.CocoDataset(ann_file, image_dir, "pose")


def test_filled_in_fields_and_zero_sizes(tmp_path):
    """iscrowd, area and num_keypoints are filled in when absent (from the vectorised
    arrays); zero-size boxes and areas load (render_targets skips them)."""
    data = _good()
    for a in data["annotations"]:
        for key in ("area", "iscrowd", "num_keypoints"):
            a.pop(key, None)
    data["annotations"].append(dict(id=9, image_id=2, category_id=1, bbox=[3, 4, 0, 5], iscrowd=1, area=0))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    coco = an.load_coco(path)
    assert [coco.anns[i]["area"] for i in (7, 8, 9)] == [1200.0, 400.0, 0]
    assert [coco.anns[i]["num_keypoints"] for i in (7, 8)] == [2, 0] and "num_keypoints" not in coco.anns[9]
    assert [coco.anns[i]["iscrowd"] for i in (7, 8, 9)] == [0, 0, 1]
    assert all(type(coco.anns[i]["num_keypoints"]) is int for i in (7, 8))  # JSON-serialisable


def _category(**fields):
    return lambda data: data["categories"][0].update(fields)


BAD_CATEGORIES = [
    (_category(keypoints="nose"), r"category id 1: keypoints must be a list of distinct"),
    (_category(keypoints=PERSON["keypoints"][:16] + [3]), r"category id 1: keypoints must be"),
    (_category(keypoints=PERSON["keypoints"][:16] + ["nose"]), r"category id 1: keypoints must be"),
    (_category(flip_pairs=[[1, 17]]), r"category id 1: flip_pairs must be 0-based .* 0\.\.16"),
    (_category(flip_pairs=[[-1, 2]]), r"category id 1: flip_pairs must be 0-based"),
    (_category(flip_pairs=[[1, 1]]), r"category id 1: flip_pairs must be .*distinct"),
    (_category(flip_pairs=[[1, 2], [2, 3]]), r"category id 1: flip_pairs must be .*one pair at most"),
    (_category(flip_pairs=[[1, 2, 3]]), r"category id 1: flip_pairs must be 0-based \[i, j\]"),
    (_category(flip_pairs=[[1.0, 2]]), r"category id 1: flip_pairs must be 0-based"),
    (_category(flip_pairs=[1, 2]), r"category id 1: flip_pairs must be 0-based"),
    (_category(sigmas=[0.05] * 16), r"category id 1: sigmas must be 17 finite numbers > 0"),
    (_category(sigmas=[0.05] * 16 + [0]), r"category id 1: sigmas must be 17 finite numbers > 0"),
    (_category(sigmas=[0.05] * 16 + [-0.05]), r"category id 1: sigmas must be 17 finite"),
    (_category(sigmas=[0.05] * 16 + [NAN]), r"category id 1: sigmas must be 17 finite"),
    (_category(sigmas=[0.05] * 16 + ["0.05"]), r"category id 1: sigmas must be 17 finite"),
    (_category(sigmas=0.05), r"category id 1: sigmas must be 17 finite"),
]


MISSCORED = [  # what COCOeval would score wrong without a word: refused, naming the id and field
    (_set("annotations", 1, "id", 7), r"annotation id 7: id appears more than once"),
    (_set("images", 1, "id", 1), r"image id 1: id appears more than once"),
    (_set("images", 0, "id", "img_1"), r"image id 'img_1': id must be an integer"),
    (_set("annotations", 0, "id", "7"), r"annotation id '7': id must be an integer"),
    (_set("annotations", 0, "id", 7.0), r"annotation id 7.0: id must be an integer"),
    (_set("categories", 0, "id", "person"), r"category id 'person': id must be an integer"),
    (_set("annotations", 0, "keypoints", -1, 2), r"annotation id 7: keypoints visibility must be 0, 1 or 2 .*\[-1\]"),
    (_set("annotations", 0, "keypoints", 3, 2), r"annotation id 7: keypoints visibility must be 0, 1 or 2 .*\[3\]"),
    (_set("annotations", 0, "keypoints", 1.5, 2), r"annotation id 7: keypoints visibility must be 0, 1 or 2"),
    (_set("annotations", 0, "num_keypoints", 0), r"annotation id 7: num_keypoints 0 but 2 joints have v > 0"),
    (_set("annotations", 1, "num_keypoints", 3), r"annotation id 8: num_keypoints 3 but 0 joints have v > 0"),
    (_category(skeleton=[[0, 1]]), r"category id 1: skeleton must be 1-based \[i, j\] pairs of joints in 1..17"),
    (_category(skeleton=[[16, 18]]), r"category id 1: skeleton must be 1-based"),
    (_category(skeleton=[[1, 2, 3]]), r"category id 1: skeleton must be 1-based"),
]


@pytest.mark.parametrize("case", range(len(MISSCORED)))
def test_ids_and_fields_cocoeval_would_misscore_are_refused(tmp_path, case):
    path = tmp_path / "ann.json"
    _refused(path, *MISSCORED[case])
    path.write_text(json.dumps(_good()))
    assert len(an.load_coco(path).anns) == 2                     # the file unbroken loads


@pytest.mark.parametrize("case", range(len(BAD_CATEGORIES)))
def test_bad_category_fields_name_file_and_category(tmp_path, case):
    edit, message = BAD_CATEGORIES[case]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_broken(edit)))
    with pytest.raises(ValueError, match=message) as err:
        an.load_coco(path)
    assert str(err.value).startswith(f"{path}: ")



def test_oks_sigmas_argument_is_checked(tmp_path):
    data = _good()
    ann_file, image_dir = write_coco(tmp_path, data["images"], data["annotations"], data["categories"])
    for bad in ([0.05] * 16, [0.05] * 16 + [0], [0.05] * 16 + [NAN], ["a"] * 17):
        with pytest.raises(ValueError, match=rf"oks_sigmas must be 17 finite numbers > 0 .*{ann_file}"):
            cd.CocoDataset(ann_file, image_dir, "pose", oks_sigmas=bad)
    with pytest.raises(ValueError, match="oks_sigmas is for task pose"):
        cd.CocoDataset(ann_file, image_dir, "det", oks_sigmas=[0.05] * 17)


# ----------------------------------------------------------------------------- zero usable data
def test_check_trainable_names_the_file_and_the_reason(tmp_path):
    im = [dict(id=i, file_name=f"{i}.png", width=32, height=32) for i in (1, 2)]
    dog = dict(id=2, name="dog")
    cases = [  # (images, annotations, categories, task, expected message)
        ([], [], [dict(id=1, name="x")], "det", r"cannot train det: the file lists no images"),
        (im, [dict(image_id=1, category_id=1, bbox=[1, 1, 9, 9], iscrowd=1)], [dict(id=1, name="x")], "det",
         r"no usable object in 2 of its 2 images .*1 annotations, 1 of \['x'\], 1 crowd"),
        (im, [dict(image_id=2, category_id=1, bbox=[1, 1, 0, 9])], [dict(id=1, name="x")], "det",
         r"no usable object .*1 with zero width or height"),
        (im, [dict(person(1, 1, 9, 9), iscrowd=1)], [PERSON], "pose",
         r"cannot train pose: no usable object in 0 of its 2 images .*1 of \['person'\], 1 crowd"),
        (im, [dict(image_id=1, category_id=2, bbox=[1, 1, 9, 9])], [PERSON, dog], "pose",
         r"no usable object .*1 annotations, 0 of \['person'\]"),
        (im, [person(1, 1, 9, 9)], [PERSON], "det", r"2 images < batch size 4: with drop_last")]
    for i, (images, anns, cats, task, message) in enumerate(cases):
        ann_file, image_dir = write_coco(tmp_path / str(i), images, anns, cats)
        ds = cd.CocoDataset(ann_file, image_dir, task, train=True)
        with pytest.raises(ValueError, match=rf"{ann_file}: .*{message}"):
            ds.check_trainable(4)
    assert ds.check_trainable(4, drop_last=False) == 1 and ds.check_trainable(2) == 1
    ds.image_ids = ds.image_ids[1:]                        # a cut such as train.py's --max-images
    with pytest.raises(ValueError, match=r"no usable object in 1 of its 2 images"):
        ds.check_trainable(1)
