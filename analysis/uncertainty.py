"""What the mixture knows: calibration, an oracle gate, where the AP goes, and rescoring.

The paper reads the mixture's sigmas as uncertainty (§4.4.1, Table 4, Fig. 5) and picks one
component per peak by its mixing coefficient (§3.3, "max"). These analyses, run by
`evaluate.py --analysis`, ask how much that is worth:

  calibration        the whole mixture (Eqs. (1)-(4)) at each matched prediction's peak
                     against its ground truth, in output-map pixels: NLL of Eq. (5) per
                     visible coordinate, coverage, PIT, reliability (calibration.py's metrics)
  oracle_component   the "Oracle comp." rule: per peak, the component whose prediction is
                     closest to the ground truth it matches (IoU for det, OKS for pose);
                     its AP is the ceiling of a perfect gate over the §3.3 choice
  cue_free_ground_truth / cue_free_results   the synthetic figures without viewpoint cues,
                     alone (synthetic_coco.py's cues_visible)
  substitution_rules CenterNet's error analysis: rows that decode the network's outputs
                     with some heads replaced by the ground truth (inference.oracle_outputs)
  rescore            opt-in: the score times a function of the predicted uncertainty

Matching (calibration): matching.match_boxes (score >= 0.3, IoU >= 0.5) and
matching.match_keypoints (score >= 0.5, OKS >= 0.5, the dataset's sigmas). Ground truth is converted to the
output map of the prediction's own image with the result's out_px (the letterbox is a scale
and a shift): det targets are the box (w, h) / out_px; pose targets are the joints' offsets
from the predicted integer peak, (joint - peak) / out_px, which is what the mixture's mu
predicts (coco_data.render_targets measures them from the integer centre the same way). The
boxes are the annotations' (training clips them to the image; a few border boxes differ).
A joint is a target when annotated (v > 0), as in training. "Selected" is the component the
result reports (the argmax for the max and mean rules, the forced one otherwise).
Shapes: N matched instances, M components, D dims, K joints, as in mdn_dense.py.
"""
import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools.coco import COCO

from analysis import calibration as cal
import mdn_dense as md
from analysis.components import FACIAL
from analysis.tables import text_table
from analysis.matching import box_similarity, ground_truths, match_boxes, match_keypoints, oks_matrix
from inference import GroundTruthHeads
from annotations import joint_part


# ----------------------------------------------------------------------------- oracle gate
def oracle_component(by_component, coco_gt, task, img_ids=None, oks_sigmas=None, thresh=0.5):
    """The "Oracle comp." rule from the forced-component results of the same peaks.

    by_component: [results with component 0 forced, component 1 forced, ...], decoded from
    the same peaks (aligned by image_id and rank). Peaks are taken best score first; each
    takes, over its components and the image's unmatched non-crowd ground truth (det: same
    category; pose: persons with annotated joints), the pair of highest similarity (IoU /
    OKS with the dataset's oks_sigmas, pycocotools' per joint) and keeps that
    component's result. A peak with no pair >= thresh (COCOeval's lowest threshold) is a
    false positive whatever its component: it keeps the highest alpha (the max rule's) and
    takes no ground truth from a better peak below it. Returns one result list (the chosen
    dicts). A greedy proxy of COCOeval's matching, so not a strict bound at every threshold."""
    peaks = {}
    for c, results in enumerate(by_component):
        for r in results:
            peaks.setdefault(r["image_id"], {}).setdefault(r["rank"], {})[c] = r
    gts = {}
    for g in ground_truths(coco_gt, img_ids, keypoints=task == "pose"):
        gts.setdefault(g["image_id"], []).append(g)
    chosen = []
    for img_id, by_rank in peaks.items():
        cands = sorted(by_rank.items(), key=lambda kv: (-max(r["score"] for r in kv[1].values()), kv[0]))
        flat = [r for _, comps in cands for r in comps.values()]
        mine = gts.get(img_id, [])
        if not mine:
            sim = np.zeros((len(flat), 0))
        elif task == "det":
            sim = box_similarity(flat, mine)                            # IoU; -1 across categories
        else:
            if oks_sigmas is None:
                raise ValueError("the pose oracle gate needs the dataset's OKS sigmas")
            sim = oks_matrix([r["keypoints"] for r in flat], [g["keypoints"] for g in mine],
                             [g["area"] for g in mine], oks_sigmas)     # (n candidates, g)
        free, row = np.ones(len(mine), bool), 0
        for _, comps in cands:
            rows = sim[row:row + len(comps)] * free                     # (components of this peak, g)
            row += len(comps)
            alphas = [r["alpha"] for r in comps.values()]
            if rows.size and rows.max() >= thresh:   # best pair; ties go to the higher alpha
                c, j = max(((c, j) for c in range(len(comps)) for j in range(len(mine))),
                           key=lambda cj: (rows[cj], alphas[cj[0]]))
                free[j] = False
            else:
                c = int(np.argmax(alphas))
            chosen.append(list(comps.values())[c])
    return chosen


def cue_free_ground_truth(coco_gt):
    """The synthetic figures without viewpoint cues (cues_visible False) as the only
    persons that count: the others get num_keypoints 0, which COCOeval's keypoint
    evaluation ignores. None when the annotations carry no cues_visible field (real data,
    detection)."""
    anns = coco_gt.dataset["annotations"]
    if not any("cues_visible" in a for a in anns):
        return None
    gt = COCO()
    gt.dataset = dict(coco_gt.dataset, info=coco_gt.dataset.get("info", {}),
                      annotations=[a if not a.get("cues_visible", True) else dict(a, num_keypoints=0) for a in anns])
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints "creating index..."
        gt.createIndex()
    return gt


def cue_free_results(results, coco_gt, oks_sigmas, background=0.01):
    """The detections of the cue-free figures: a detection belongs to the person of its image
    with the highest OKS (background when under `background` for all, kept as a possible
    false positive); those of figures with cues are left out. (Ignoring those figures alone
    would count their loosely placed detections as false positives of the cue-free ones.)"""
    persons = {}
    for g in ground_truths(coco_gt, keypoints=True):
        persons.setdefault(g["image_id"], []).append(g)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    kept = []
    for img_id, mine in by_image.items():
        gts = persons.get(img_id, [])
        if not gts:
            kept += mine
            continue
        sim = oks_matrix([r["keypoints"] for r in mine], [g["keypoints"] for g in gts], [g["area"] for g in gts], oks_sigmas)
        cues = np.array([g.get("cues_visible", True) for g in gts])
        kept += [r for r, s in zip(mine, sim) if s.max() < background or not cues[s.argmax()]]
    return kept


# ----------------------------------------------------------------------------- substitution
def substitution_rules(task, rule="max", refine=False):
    """CenterNet's error-analysis rows: {row name: rule}; "network" decodes unchanged.
    Keypoint AP does not depend on reg (joints are offsets from the integer peak)."""
    size = "wh" if task == "det" else "hps"
    joints = ("hm_hp", "hp_offset") if refine else ()
    rows = {"network": rule, "GT hm": GroundTruthHeads(("hm",), rule), "GT reg": GroundTruthHeads(("reg",), rule),
            f"GT {size}": GroundTruthHeads((size,), rule)}
    if refine:
        rows["GT hm_hp"] = GroundTruthHeads(joints, rule)
    rows["GT all"] = GroundTruthHeads(("hm", "reg", size) + joints, rule)
    return rows



# ----------------------------------------------------------------------------- calibration
def matched_mixtures(results, coco_gt, task, img_ids=None, oks_sigmas=None):
    """Matched (prediction, ground truth) pairs as arrays in output-map pixels (see the module
    docstring): target, mask (N, D), mu (N, M, D), sigma (N, M, 2), log_alpha (N, M),
    component (N,) and pairs. Results need decode_results(mixture=True)'s fields; pose
    matches with the dataset's oks_sigmas."""
    if task == "det":
        pairs = match_boxes(results, coco_gt, img_ids=img_ids)
    else:
        pairs = match_keypoints(results, coco_gt, oks_sigmas, img_ids=img_ids)
    if any("mix_mu" not in r for r, _ in pairs):
        raise ValueError("calibration needs the mixture: decode with mixture=True (inference.Inference.mixture)")
    targets, masks = [], []
    for r, g in pairs:
        s = r["out_px"]
        if task == "det":
            targets.append(np.asarray(g["bbox"][2:], np.float64) / s)
            masks.append(np.ones(2))
        else:
            kps = np.asarray(g["keypoints"], np.float64).reshape(-1, 3)   # (K, 3)
            targets.append(((kps[:, :2] - np.asarray(r["peak"])) / s).ravel())
            masks.append(np.repeat(kps[:, 2] > 0, 2).astype(np.float64))
    stack = lambda key, shape: np.stack([r[key] for r, _ in pairs]).astype(np.float64) if pairs else np.zeros(shape)
    D, M = (len(targets[0]), len(pairs[0][0]["mix_log_alpha"])) if pairs else (2, 1)
    return dict(target=np.array(targets).reshape(-1, D), mask=np.array(masks).reshape(-1, D),
                mu=stack("mix_mu", (0, M, D)), sigma=stack("mix_sigma", (0, M, 2)),
                log_alpha=stack("mix_log_alpha", (0, M)),
                component=np.array([r["component"] for r, _ in pairs], np.int64), pairs=pairs)


def calibration_metrics(x, kpt_scale=None, keypoint_names=None):
    """calibration.py's metrics of matched_mixtures' arrays x: dict nll, coverage ({"joint",
    "coordinate"}: per 2-D point, for det the (w, h) point; per coordinate), pit (histogram
    of the full mixture's PIT), reliability ({"all", "comp c", and for pose "facial" /
    "limbs": table}, ENCE by the selected component's predicted std)."""
    args = (x["target"], x["mu"], x["sigma"], x["log_alpha"], x["mask"], kpt_scale)
    mu_s, sigma_s = cal.select(x["mu"], x["sigma"], x["log_alpha"], x["component"])[:2]
    sel = (x["target"], mu_s, sigma_s, x["mask"], kpt_scale)
    found = dict(nll=cal.nll_per_coordinate(*args, component=x["component"]),
                 coverage={per: cal.coverage(*sel, per=per) for per in ("joint", "coordinate")},
                 pit=cal.pit_histogram(cal.pit(*args)))
    res = cal.residuals(*sel)
    rel = cal.reliability(res["error"], res["sigma"])
    rel.update(cal.reliability(res["error"], res["sigma"], groups=[f"comp {c + 1}" for c in x["component"][res["instance"]]]))
    if keypoint_names is not None:
        facial = np.array([joint_part(n) in FACIAL for n in keypoint_names])
        rel.update(cal.reliability(res["error"], res["sigma"], groups=np.where(facial[res["joint"]], "facial", "limbs")))
    found["reliability"] = rel
    return found


def calibration_report(results, coco_gt, task, m, kpt_scale=None, keypoint_names=None, img_ids=None):
    """(found, text): calibration_metrics of the matched predictions plus the count of pairs;
    found is {} (and the text says why) for the M = 0 base, which predicts no density,
    and when no prediction matched."""
    match = "score >= 0.3, IoU >= 0.5" if task == "det" else "score >= 0.5, OKS >= 0.5"
    if m == 0:
        return {}, "calibration: the M = 0 base (L1 regression) predicts no density: no NLL, coverage, PIT or reliability"
    x = matched_mixtures(results, coco_gt, task, img_ids, kpt_scale)
    if not len(x["target"]):
        return {}, f"calibration: no prediction matched ({match}): nothing to calibrate"
    found = calibration_metrics(x, kpt_scale, keypoint_names if task == "pose" else None)
    found["pairs"] = len(x["target"])
    what = "box (w, h)" if task == "det" else "joint offsets from the peak"
    rel = found["reliability"]
    text = cal.format_calibration(found["nll"], found["coverage"], {"all": rel["all"]}, found["pit"])
    groups = text_table(["group", "n", "RMV", "RMSE", "RMSE/RMV", "ENCE"],
                        [[name, t["count"].sum(), f"{_rms(t['rmv'], t['count']):.3g}", f"{_rms(t['rmse'], t['count']):.3g}",
                          f"{_rms(t['rmse'], t['count']) / _rms(t['rmv'], t['count']):.2f}", f"{t['ence']:.3f}"]
                         for name, t in rel.items()],
                        "reliability by group (the selected component" + ("; facial: nose, eyes, ears" if task == "pose" else "")
                        + "); RMS over all coordinates")
    return found, (f"calibration of the mixture at {found['pairs']} matched predictions ({match}; {what}, "
                   f"output-map pixels)\n{text}\n\n{groups}")


def _rms(per_bin, counts):
    """RMS over all coordinates from per-bin RMS values and counts."""
    return float(np.sqrt((np.asarray(per_bin) ** 2 * counts).sum() / counts.sum()))


# ----------------------------------------------------------------------------- rescoring
RESCORE = ("sigma", "density")


def relative_size(r):
    """sqrt(box area) of a result in output-map pixels (at least 1 original pixel): the
    uncertainty of (w, h) and of joint offsets grows with the object, so rescoring compares
    sigma to it (an absolute sigma would rank every large object last)."""
    w, h = r["bbox"][2:]
    return np.sqrt(max(w * h, 1.0)) / r["out_px"]


def rescore(results, how, kpt_scale=None):
    """Result dicts with new scores (copies), for the opt-in "Rescored" rows.
    how "sigma": score / (1 + u / median u), u = mean of the reported (sx, sy) / box size;
    "density": score * p(mu_sel)^(1/D) * box size (the full mixture's density at the
    selected mean, per dimension; needs the mixture fields), divided by its maximum.
    AP depends only on the order of the scores, so both are free of units and scale."""
    if not results:
        return []
    size = np.array([relative_size(r) for r in results])
    if how == "sigma":
        u = np.array([np.mean(r["sigma"]) for r in results]) / size
        factor = 1 / (1 + u / max(np.median(u), 1e-12))
    elif how == "density":
        mu = torch.as_tensor(np.stack([r["mix_mu"] for r in results]), dtype=torch.float64)      # (n, M, D)
        comp = torch.as_tensor([r["component"] for r in results])
        mu_sel = mu[torch.arange(len(results)), comp]                                            # (n, D)
        nll = md.mdn_nll(mu_sel, mu, torch.as_tensor(np.stack([r["mix_sigma"] for r in results]), dtype=torch.float64),
                         torch.as_tensor(np.stack([r["mix_log_alpha"] for r in results]), dtype=torch.float64),
                         kpt_scale=kpt_scale).numpy()
        log_f = -nll / mu.shape[-1] + np.log(size)
        factor = np.exp(log_f - log_f.max())
    else:
        raise ValueError(f"rescore must be one of {RESCORE}, got {how!r}")
    return [dict(r, score=float(r["score"] * f)) for r, f in zip(results, factor)]
