"""What the mixture components learn: the analyses of the paper's §4.3.1 and §4.4.1-4.4.2.

Every function takes a plain list of COCO result dicts (as inference.predict writes them:
image_id, category_id, bbox [x, y, w, h], score, plus keypoints, component, sigma, center in
original pixels) and, where ground truth is needed, the pycocotools COCO object, so a notebook
can call them on any results.json. Definitions (the paper leaves these open; chosen here):

  Fig. 2 / Pearson (det)  component_scale: predictions with score >= 0.3 are matched greedily
      (highest score first) to the unmatched non-crowd ground truth of the same category with
      the highest IoU >= 0.5; a matched prediction takes its ground truth's scale sqrt(area)
      and category. Components are renamed 1..M in order of the mean scale of their matches
      ("named in order of their scale range", Fig. 2), and Pearson's r is taken between that
      rank and the scale (paper: 0.76) and between that rank and the contiguous category index
      (paper: 0.04). Order-free companions: ARI of component vs COCO scale bin and vs category.
  Table 4 (pose) component_statistics: predictions with score >= 0.3; per max component the
      prediction rate, mean (std) of sigma_x, sigma_y (output-map pixels, before the per-joint
      scale k_j), and the share of offsets (joint - person centre, original pixels) pointing
      to +x and +y, for the left joints and for the right joints (from the keypoint names).
  Table 5 (pose) face_visibility: ground truth with at least 6 annotated keypoints ("more
      than 5"); face visible = nose annotated and visible (v = 2). Predictions with score
      >= 0.5, matched to that ground truth greedily by OKS >= 0.5 (also >= 10 and >= 0.7, the
      paper's bracketed numbers). Reports the ground-truth keypoint / face visibility split,
      the component split of the predictions, and the face x component table of the pairs.
  Table 6 (pose) keypoint_subset_table: COCO keypoint AP on joint subsets (ground truth and
      detections sliced, num_keypoints recomputed, OKS sigmas sliced), for the model and for
      the ground truth displaced by 1, 2, 3 pixels in a random direction (score 1).
  Latent modes (synthetic data) latent_mode_agreement: predictions with score >= 0.3 matched
      as above (det: IoU >= 0.5, component vs scale_bin; pose: OKS >= 0.5, component vs
      viewpoint, apart for figures with and without cues): contingency table, purity (share
      of pairs whose component's majority mode is their mode) and adjusted Rand index.
  Fig. 5: plots.py.

Undefined numbers (a correlation of fewer than two points or of a constant, a mean of
nothing) are nan and print as "-"; shares and counts of nothing are 0.
"""
import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from annotations import joint_part, joint_side
from analysis.matching import ground_truths, match_boxes, match_keypoints
from analysis.tables import text_table
from coco_eval import coco_evaluate

# Table 6 columns: joint subsets by body part (the joint name without its side prefix).
FACIAL = ("nose", "eye", "ear")
KEYPOINT_SUBSETS = {"Nose": ("nose",), "Ears": ("ear",), "Shoulders": ("shoulder",),
                    "Wrists": ("wrist",), "Hips": ("hip",), "Ankles": ("ankle",)}


# ----------------------------------------------------------------------------- statistics
def pearson(x, y):
    """Pearson's r of two equal-length sequences; nan with < 2 points or a constant one."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def contingency(a, b):
    """Counts of label pairs: (table (len(rows), len(cols)) int, rows, cols), the sorted
    distinct values of a and of b."""
    rows, cols = sorted(set(a), key=str), sorted(set(b), key=str)
    table = np.zeros((len(rows), len(cols)), np.int64)
    for u, v in zip(a, b):
        table[rows.index(u), cols.index(v)] += 1
    return table, rows, cols


def adjusted_rand_index(a, b):
    """Hubert & Arabie's adjusted Rand index of two labelings (1 = same partition, ~0 =
    chance). Both partitions trivial (one cluster, or all singletons) means they are equal:
    1. nan for no items."""
    if len(a) == 0:
        return float("nan")
    table = contingency(a, b)[0]
    pairs = lambda n: float((n * (n - 1) / 2).sum())                 # number of pairs
    index, sum_a, sum_b, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(table.sum())
    expected = sum_a * sum_b / total if total else 0.0               # E[index] under chance
    best = (sum_a + sum_b) / 2
    return 1.0 if best == expected else float((index - expected) / (best - expected))


def purity(truth, clusters):
    """Share of items whose cluster's majority label is their own label. nan for none."""
    if len(truth) == 0:
        return float("nan")
    table = contingency(clusters, truth)[0]
    return float(table.max(1).sum() / table.sum())


# ----------------------------------------------------------------------------- Fig. 2
def component_scale(results, coco_gt, score_thresh=0.3, iou_thresh=0.5, img_ids=None):
    """Fig. 2 and the Pearson correlations of §4.3.1 (definitions in the module docstring).

    Returns rows (one per component that made a match, in scale order: name = rank 1..,
    component = decoder index, count, share, mean / median scale), gt (count, mean / median
    scale of all non-crowd ground truth), scales ({name: matched scales}, "GT": all),
    pearson_scale, pearson_category, ari_scale_bin, ari_category, matched (int).
    """
    pairs = match_boxes(results, coco_gt, score_thresh, iou_thresh, img_ids)
    scale = lambda g: float(np.sqrt(g["area"]))
    comps = np.array([r["component"] for r, _ in pairs], np.int64)
    scales = np.array([scale(g) for _, g in pairs])
    order = sorted(set(comps.tolist()), key=lambda c: scales[comps == c].mean())
    rank = np.array([order.index(c) for c in comps], np.int64)
    cat_index = {c: i for i, c in enumerate(sorted(coco_gt.getCatIds()))}
    cats = [cat_index[g["category_id"]] for _, g in pairs]
    bins = [0 if g["area"] < 32 ** 2 else 1 if g["area"] < 96 ** 2 else 2 for _, g in pairs]
    gt_scales = np.array([scale(g) for g in ground_truths(coco_gt, img_ids)])
    stats = lambda s, total: dict(count=len(s), share=len(s) / max(total, 1),
                                  mean_scale=float(s.mean()) if len(s) else float("nan"),
                                  median_scale=float(np.median(s)) if len(s) else float("nan"))
    rows = [dict(name=str(i + 1), component=c, **stats(scales[comps == c], len(pairs))) for i, c in enumerate(order)]
    return dict(rows=rows, gt=stats(gt_scales, len(gt_scales)), matched=len(pairs),
                scales={**{row["name"]: scales[comps == row["component"]] for row in rows}, "GT": gt_scales},
                pearson_scale=pearson(rank, scales), pearson_category=pearson(rank, cats),
                ari_scale_bin=adjusted_rand_index(rank.tolist(), bins),
                ari_category=adjusted_rand_index(rank.tolist(), cats))


# ----------------------------------------------------------------------------- Table 4
def joint_sides(keypoint_names):
    """{"left": [joint indices], "right": [...]} by annotations.joint_side."""
    return {side: [j for j, n in enumerate(keypoint_names) if joint_side(n) == side] for side in ("left", "right")}


def component_statistics(results, keypoint_names, score_thresh=0.3):
    """Table 4: one row per component that made a prediction with score >= score_thresh:
    component (1-based), count, rate, sigma_x / sigma_y mean and std, and the +x / +y
    offset shares of the left and the right joints (keys x+_left, y+_left, x+_right, y+_right)."""
    results = [r for r in results if r["score"] >= score_thresh]
    sides = joint_sides(keypoint_names)
    K = len(keypoint_names)
    rows = []
    for c in sorted({r["component"] for r in results}):
        mine = [r for r in results if r["component"] == c]
        sigma = np.array([r["sigma"] for r in mine], np.float64)                      # (n, 2)
        offsets = (np.array([r["keypoints"] for r in mine], np.float64).reshape(-1, K, 3)[..., :2]
                   - np.array([r["center"] for r in mine], np.float64)[:, None])      # (n, K, 2)
        row = {"component": c + 1, "count": len(mine), "rate": len(mine) / len(results),
               "sigma_x": sigma[:, 0].mean(), "sigma_x_std": sigma[:, 0].std(),
               "sigma_y": sigma[:, 1].mean(), "sigma_y_std": sigma[:, 1].std()}
        for side, joints in sides.items():
            for axis, name in enumerate("xy"):
                row[f"{name}+_{side}"] = float((offsets[:, joints, axis] > 0).mean()) if joints else float("nan")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- Table 5
def face_visibility(results, coco_gt, keypoint_names, sigmas, score_thresh=0.5, min_keypoints=6,
                    oks_thresh=0.5, img_ids=None):
    """Table 5 (definitions in the module docstring). Returns gt (instances, occluded_keypoints,
    visible_keypoints, occluded_face, visible_face as shares), predictions ({component:
    share} of the predictions with score >= score_thresh), matched (pairs), table, faces,
    components: the face (visible / occluded) x component counts of the matched pairs."""
    nose = keypoint_names.index("nose") if "nose" in keypoint_names else None
    gts = [g for g in ground_truths(coco_gt, img_ids, keypoints=True) if g["num_keypoints"] >= min_keypoints]
    v = np.array([g["keypoints"][2::3] for g in gts], np.float64).reshape(len(gts), len(keypoint_names))
    annotated = max(int((v > 0).sum()), 1)
    face = lambda g: "visible" if nose is not None and g["keypoints"][3 * nose + 2] == 2 else "occluded"
    faces = [face(g) for g in gts]
    gt = dict(instances=len(gts), occluded_keypoints=float((v == 1).sum() / annotated),
              visible_keypoints=float((v == 2).sum() / annotated),
              occluded_face=faces.count("occluded") / max(len(gts), 1),
              visible_face=faces.count("visible") / max(len(gts), 1))
    confident = [r["component"] + 1 for r in results if r["score"] >= score_thresh]
    predictions = {c: confident.count(c) / len(confident) for c in sorted(set(confident))}
    pairs = match_keypoints(results, coco_gt, sigmas, score_thresh, oks_thresh, gts=gts)
    table, rows, cols = contingency([face(g) for _, g in pairs], [r["component"] + 1 for r, _ in pairs])
    return dict(gt=gt, predictions=predictions, matched=len(pairs), table=table, faces=rows, components=cols)


# ----------------------------------------------------------------------------- Table 6
def subset_joints(keypoint_names):
    """Table 6's columns -> joint indices (subsets absent from the names are left out)."""
    parts = [joint_part(n) for n in keypoint_names]
    subsets = {"All": list(range(len(parts))),
               "Facial": [j for j, p in enumerate(parts) if p in FACIAL],
               "Non-facial": [j for j, p in enumerate(parts) if p not in FACIAL]}
    subsets.update({name: [j for j, p in enumerate(parts) if p in names] for name, names in KEYPOINT_SUBSETS.items()})
    return {name: joints for name, joints in subsets.items() if joints}


def _slice(keypoints, joints):
    return [x for j in joints for x in keypoints[3 * j:3 * j + 3]]


def sliced_ground_truth(coco_gt, joints):
    """A COCO object whose persons keep only the joints `joints`, num_keypoints recomputed
    (persons without an annotated joint of the subset are then ignored: COCOeval ignores
    num_keypoints = 0)."""
    def cut(a):
        kps = _slice(a["keypoints"], joints)
        return dict(a, keypoints=kps, num_keypoints=int(sum(v > 0 for v in kps[2::3])))
    data = dict(coco_gt.dataset, info=coco_gt.dataset.get("info", {}))  # loadRes needs "info"
    data["annotations"] = [cut(a) if a.get("keypoints") else a for a in coco_gt.dataset["annotations"]]
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints "creating index..."
        gt.createIndex()
    return gt


def keypoint_subset_ap(coco_gt, results, joints, sigmas, img_ids=None, sliced=None):
    """COCO keypoint AP (stats[0]) on the joints `joints` only: ground truth (sliced, or
    sliced_ground_truth's result passed in) and results sliced, the dataset's OKS sigmas
    sliced (setting the other sigmas to 0 would divide by 0). 0 without results."""
    img_ids = sorted(coco_gt.getImgIds()) if img_ids is None else list(img_ids)
    wanted = set(img_ids)
    results = [dict(r, keypoints=_slice(r["keypoints"], joints)) for r in results if r["image_id"] in wanted]
    gt = sliced or sliced_ground_truth(coco_gt, joints)
    cat = next(c for c in coco_gt.dataset["categories"] if c.get("keypoints"))
    sigmas = np.asarray(sigmas, np.float64)[list(joints)]
    return float(coco_evaluate(gt, results, "pose", img_ids, cat_ids=[cat["id"]], kpt_oks_sigmas=sigmas)[0])


def displaced_ground_truth(coco_gt, pixels, seed=0, img_ids=None):
    """Table 6's reference rows: every ground-truth person with annotated joints as a
    detection of score 1, each annotated joint moved `pixels` in an independent random
    direction. Unannotated joints go to the box centre, as a network would put them near
    the person: for a subset the person lacks, COCOeval then matches the detection to the
    ignored person (OKS against the box) instead of counting a false positive at (0, 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for g in ground_truths(coco_gt, img_ids, keypoints=True):
        kps = np.array(g["keypoints"], np.float64).reshape(-1, 3)
        angle = rng.uniform(0, 2 * np.pi, len(kps))
        kps[:, :2] += pixels * np.stack([np.cos(angle), np.sin(angle)], 1)
        x, y, w, h = g["bbox"]
        kps[kps[:, 2] == 0, :2] = x + w / 2, y + h / 2
        kps[:, 2] = 1
        out.append(dict(image_id=g["image_id"], category_id=g["category_id"], bbox=list(g["bbox"]),
                        score=1.0, keypoints=kps.ravel().tolist()))
    return out


def keypoint_subset_table(results, coco_gt, keypoint_names, sigmas, img_ids=None, displacements=(1, 2, 3), seed=0):
    """Table 6: {row name: {subset: AP}} for "GT Disp. d" (d in displacements) and "Model"."""
    subsets = subset_joints(keypoint_names)
    rows = {f"GT Disp. {d}": displaced_ground_truth(coco_gt, d, seed, img_ids) for d in displacements}
    rows["Model"] = results
    table = {name: {} for name in rows}
    for s, joints in subsets.items():
        sliced = sliced_ground_truth(coco_gt, joints)                # once per subset
        for name, res in rows.items():
            table[name][s] = keypoint_subset_ap(coco_gt, res, joints, sigmas, img_ids, sliced)
    return table


# ----------------------------------------------------------------------------- latent modes
def latent_mode_agreement(results, coco_gt, task, sigmas=None, score_thresh=0.3, img_ids=None):
    """Max component vs the latent mode recorded by synthetic_coco.py, on matched pairs
    (det: IoU >= 0.5, mode scale_bin; pose: OKS >= 0.5, mode viewpoint, apart for
    cues_visible True / False). Returns {group: dict(table, components, modes, purity, ari,
    pairs)}; {} when the annotations carry no such field."""
    key = {"det": "scale_bin", "pose": "viewpoint"}[task]
    if not any(key in a for a in coco_gt.dataset["annotations"]):
        return {}
    if task == "det":
        groups = {"all": match_boxes(results, coco_gt, score_thresh, 0.5, img_ids)}
    else:
        pairs = match_keypoints(results, coco_gt, sigmas, score_thresh, 0.5, img_ids)
        groups = {f"cues {cue}": [(r, g) for r, g in pairs if g.get("cues_visible", True) == cue] for cue in (True, False)}
    out = {}
    for name, pairs in groups.items():
        comps, modes = [r["component"] + 1 for r, _ in pairs], [g[key] for _, g in pairs]
        table, rows, cols = contingency(comps, modes)
        out[name] = dict(table=table, components=rows, modes=cols, pairs=len(pairs),
                         purity=purity(modes, comps), ari=adjusted_rand_index(comps, modes))
    return out


# ----------------------------------------------------------------------------- printing
def _num(x, percent=False):
    """A table cell: nan -> "-"; shares in percent."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if percent else (f"{x:.2f}" if isinstance(x, float) else str(x))


def format_scale(res):
    rows = [[r["name"], r["component"] + 1, r["count"], _num(r["share"], True), _num(r["mean_scale"]),
             _num(r["median_scale"])] for r in res["rows"]]
    g = res["gt"]
    rows.append(["GT", "-", g["count"], _num(g["share"], True), _num(g["mean_scale"]), _num(g["median_scale"])])
    return "\n".join([text_table(["Comp.", "decoder", "matched", "share %", "mean sqrt(area)", "median"], rows,
                                 "Fig. 2: object scale per max component (score >= 0.3, IoU >= 0.5; named by scale)"),
                      f"Pearson r: component vs scale {_num(res['pearson_scale'])} (paper 0.76), vs category "
                      f"{_num(res['pearson_category'])} (paper 0.04); ARI: vs scale bin {_num(res['ari_scale_bin'])}, "
                      f"vs category {_num(res['ari_category'])}"] + ([] if res["matched"] else ["(no prediction matched)"]))


def format_component_statistics(rows):
    body = [[r["component"], r["count"], _num(r["rate"], True),
             f"{r['sigma_x']:.1f} ({r['sigma_x_std']:.1f})", f"{r['sigma_y']:.1f} ({r['sigma_y_std']:.1f})"]
            + [_num(r[k], True) for k in ("x+_left", "y+_left", "x+_right", "y+_right")] for r in rows]
    text = text_table(["Comp.", "count", "rate %", "sigma_x mean (std)", "sigma_y mean (std)", "Ox+ L %",
                       "Oy+ L %", "Ox+ R %", "Oy+ R %"], body, "Table 4: per max component, predictions with score >= 0.3")
    return text + ("" if rows else "\n(no prediction with score >= 0.3)")


def format_face(res, title):
    g = res["gt"]
    text = text_table(["GT persons", "occl. kpts %", "vis. kpts %", "occl. face %", "vis. face %"],
                      [[g["instances"]] + [_num(g[k], True) for k in ("occluded_keypoints", "visible_keypoints",
                                                                          "occluded_face", "visible_face")]], title)
    text += "\npredictions per component %: " + (", ".join(f"{c}: {_num(s, True)}" for c, s in res["predictions"].items()) or "none")
    rows = [[face] + list(row) for face, row in zip(res["faces"], res["table"].tolist())]
    return text + "\n" + text_table(["face \\ comp."] + res["components"], rows, f"matched by OKS >= 0.5: {res['matched']}")


def format_subsets(table):
    subsets = list(next(iter(table.values())))
    return text_table([""] + subsets, [[name] + [_num(ap, True) for ap in row.values()] for name, row in table.items()],
                      "Table 6: keypoint AP on joint subsets (GT Disp. d: ground truth moved d px)")


def format_latent(res):
    parts = []
    for name, r in res.items():
        rows = [[c] + list(row) for c, row in zip(r["components"], r["table"].tolist())]
        trivial = "" if len(r["modes"]) > 1 else " (fewer than two modes matched: purity and ARI are vacuous)"
        parts.append(text_table(["comp. \\ mode"] + r["modes"], rows, f"latent modes ({name}): {r['pairs']} matched, "
                                f"purity {_num(r['purity'])}, ARI {_num(r['ari'])}{trivial}"))
    return "\n".join(parts)


def run_all(results, coco_gt, task, keypoint_names=None, img_ids=None, sigmas=None):
    """Every analysis for the task (pose: sigmas, the dataset's OKS sigmas). Returns (the
    numbers, the text tables); the command that asked for them (evaluate.py --analysis)
    prints them and writes the files."""
    found, texts = {}, ["no detections: the analyses are empty"] if not results else []
    if task == "det":
        found["fig2"] = component_scale(results, coco_gt, img_ids=img_ids)
        texts.append(format_scale(found["fig2"]))
    else:
        found["table4"] = component_statistics(results, keypoint_names)
        texts.append(format_component_statistics(found["table4"]))
        for n, score in ((6, 0.5), (10, 0.7)):  # the paper's two settings of Table 5
            found[f"table5_{n}_{score}"] = face_visibility(results, coco_gt, keypoint_names, sigmas, score, n, img_ids=img_ids)
            texts.append(format_face(found[f"table5_{n}_{score}"], f"Table 5: GT with >= {n} keypoints, predictions with score >= {score}"))
        found["table6"] = keypoint_subset_table(results, coco_gt, keypoint_names, sigmas, img_ids)
        texts.append(format_subsets(found["table6"]))
    found["latent"] = latent_mode_agreement(results, coco_gt, task, sigmas, img_ids=img_ids)
    if found["latent"]:
        texts.append(format_latent(found["latent"]))
    return found, "\n\n".join(texts)
