"""transforms.py and annotations.py's joint sides: the affine maps (round trip, flip twice),
PIL's warp against the target coordinates, the rectangle-only warp against PIL's full
transform, the colour augmentation against CenterNet's sequential jitter, CenterNet's
constants and crop scales, and the left/right naming rules behind the flip index."""
import warnings

import numpy as np
import pytest
from PIL import Image

import annotations as an
import coco_data as cd
import transforms as tf


def test_affine_round_trip_and_flip_twice():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-50, 700, (100, 2))
    for flip in (False, True):
        A = tf.affine_matrix(rng.uniform(0, 600, 2), rng.uniform(50, 900), 512, flip)
        back = tf.apply_affine(tf.apply_affine(pts, A), tf.invert_affine(A))
        assert np.abs(back - pts).max() < 1e-3
    F = tf.affine_matrix((32, 32), 64, 64, flip=True)                 # pure mirror of a 64 px image
    assert np.allclose(tf.apply_affine(tf.apply_affine(pts, F), F), pts)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    twice = img
    for _ in range(2):
        twice = twice.transform((64, 64), Image.AFFINE, tuple(tf.invert_affine(F).ravel()),
                                resample=Image.BILINEAR)
    assert np.array_equal(np.asarray(twice), np.asarray(img))
    idx = an.flip_index(an.COCO_PERSON_KEYPOINTS)
    assert idx == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert [idx[i] for i in idx] == list(range(17))
    assert an.flip_index(["head", "l_hand", "r_hand", "right_foot", "left_foot"]) == [0, 2, 1, 4, 3]



@pytest.mark.parametrize("left, right", [
    ("left_hand", "right_hand"), ("hand_left", "hand_right"), ("l_hand", "r_hand"),
    ("hand_l", "hand_r"), ("leftHand", "rightHand"), ("LeftHand", "RightHand"), ("LHand", "RHand"),
    ("L_hand", "R_hand"), ("Hand_L", "Hand_R"), ("HAND-LEFT", "HAND-RIGHT"), ("left hand", "right hand"),
    ("left_hand", "hand_r")])
def test_flip_index_pairs_common_side_namings(left, right):
    assert an.joint_side(left) == "left" and an.joint_side(right) == "right"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # and no unpaired warning
        assert an.flip_index(["head", right, "neck", left]) == [0, 3, 2, 1]


def test_joint_side_none_and_unpaired_warning_and_explicit_pairs():
    for name in ("nose", "L1", "l5_vertebra", "upright", "lower_lip", "MidHip", "left_right", ""):
        assert an.joint_side(name) is None, name
    names = ["head", "left_hand", "right_foot", "lefthand", "righthand", "upright"]
    with pytest.warns(UserWarning, match=r"no mirror joint: \['left_hand', 'right_foot', "
                                         r"'lefthand', 'righthand', 'upright'\].*flip_pairs"):
        assert an.flip_index(names) == list(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # explicit: no guessing
        assert an.flip_index(names, [[1, 4], [3, 2]]) == [0, 4, 3, 2, 1, 5]
        assert an.flip_index(an.COCO_PERSON_KEYPOINTS) == an.flip_index(an.COCO_PERSON_KEYPOINTS, [[1, 2], [3, 4], [5, 6], [7, 8],
                                                                       [9, 10], [11, 12], [13, 14], [15, 16]])


def test_pil_warp_agrees_with_target_coordinates():
    """A bright pixel covering [x, x+1) lands where apply_affine sends its centre x + 0.5."""
    z = np.zeros((90, 120), np.uint8)
    z[37, 81] = 255
    A = tf.affine_matrix((55.3, 47.9), 70.0, 256)                     # upsample by 256/70
    warped = Image.fromarray(z).transform((256, 256), Image.AFFINE,
                                          tuple(tf.invert_affine(A).ravel()), resample=Image.BILINEAR)
    w = np.asarray(warped, np.float64)
    ys, xs = np.mgrid[:256, :256] + 0.5                                # pixel centres
    centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
    assert np.abs(centroid - tf.apply_affine([81.5, 37.5], A)).max() < 0.05


def test_warp_image_equals_full_pil_transform():
    """Resampling only the image's rectangle changes no pixel (crops, letterbox, mirror)."""
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))
    for t in range(12):
        A = tf.affine_matrix(rng.uniform(-20, 120, 2), rng.uniform(30, 160), 96, bool(t % 2))
        full = img.transform((96, 96), Image.AFFINE, tuple(tf.invert_affine(A).ravel()),
                             resample=Image.BILINEAR)
        assert np.array_equal(np.asarray(tf.warp_image(img, A, 96)), np.asarray(full))


def test_color_matrix_equals_sequential_official_jitter():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (50, 3)).astype(np.float64)               # raw RGB pixels
    P, q = tf.color_matrix(x.mean(0), np.random.default_rng(7))
    # the official order of operations, one step at a time, with the same draws
    r = np.random.default_rng(7)
    img = x / 255
    gray = img @ tf.GRAY_RGB
    for op in r.permutation(3):
        a = 1 + r.uniform(-0.4, 0.4)
        if op == 0:
            img = img * a
        elif op == 1:
            img = img * a + gray.mean() * (1 - a)
        else:
            img = img * a + gray[:, None] * (1 - a)
    img = img + tf.EIG_VEC_RGB @ (tf.EIG_VAL * r.normal(0, 0.1, 3))
    expected = (img - tf.MEAN_RGB) / tf.STD_RGB
    assert np.allclose(x @ P.T + q, expected, atol=1e-4)
    P0, q0 = tf.color_matrix()
    assert np.allclose(x @ P0.T + q0, (x / 255 - tf.MEAN_RGB) / tf.STD_RGB, atol=1e-5)


def test_augmentation_constants_are_centernets():
    # CenterNet's _eig_val / _eig_vec (BGR rows reversed): the lighting noise of the colour augmentation
    assert tf.EIG_VAL.tolist() == pytest.approx([0.2141788, 0.01817699, 0.00341571], abs=1e-8)
    # the crop scales 0.6 .. 1.3 in steps of 0.1, each the exact decimal (np.arange's 0.7999999999999999
    # would move a joint lying on a cell boundary into the neighbouring cell)
    assert cd.TRAIN_SCALES == tuple(round(0.6 + 0.1 * i, 1) for i in range(8))
    for s in cd.TRAIN_SCALES:
        assert s == float(f"{s:.1f}")


def test_unit_crop_scale_keeps_every_joint_in_its_cell():
    # the crop scale 1.0 must be the identity warp: with np.arange's 0.9999999999999999, 12 of the 256
    # half-pixel positions of a 128 px image (those on a cell's lower edge) went to the cell below
    s = [s for s in cd.TRAIN_SCALES if round(s, 6) == 1.0]
    assert s == [1.0]
    A = tf.affine_matrix(np.array([64.0, 64.0]), 128 * s[0], 128)
    x = np.arange(0, 128, 0.5)
    got = tf.apply_affine(np.stack([x, x], 1), A)
    assert (np.floor(got / cd.STRIDE) == np.floor(np.stack([x, x], 1) / cd.STRIDE)).all()
