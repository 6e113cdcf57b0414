"""Decoded detections -> COCO result dicts -> COCOeval statistics.

The last step of CenterNet's pipeline (its ctdet / multi_pose post-processing and
run_eval): map mdn_dense.decode's output-map coordinates back to original image pixels
with each image's out2img affine (from coco_data.CocoDataset), write COCO's result format
and evaluate with pycocotools.

Differs from the official code: scores are not rounded (rounding to 2 decimals creates
ties that change AP); "no detections" gives all-zero statistics instead of pycocotools'
IndexError; loadRes gets copies (it edits the dicts it is given).
"""
import contextlib
import copy
import io

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from coco_data import apply_affine

NUM_STATS = {"bbox": 12, "keypoints": 10}


def _numpy(x):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)


def to_coco_results(det, out2img, image_ids, cat_ids, task):
    """mdn_dense.decode output -> a flat list of COCO result dicts.

    det: scores, classes (B, k), boxes (B, k, 4) x1 y1 x2 y2 and, for pose, keypoints
    (B, k, K, 2), all in output-map pixels; out2img (B, 2, 3); image_ids (B,); cat_ids: class
    id -> COCO category id. Each dict: image_id, category_id, bbox [x, y, w, h] in original
    pixels, score (float, unrounded); pose adds keypoints [x, y, 1] * K, so one list can be
    evaluated as boxes and as keypoints.
    """
    A = _numpy(out2img)                                               # (B, 2, 3)
    scores, classes = _numpy(det["scores"]), _numpy(det["classes"]).astype(int)
    boxes = _numpy(det["boxes"])
    kps = _numpy(det["keypoints"]) if task == "pose" else None
    results = []
    for b, img_id in enumerate(_numpy(image_ids).astype(int).tolist()):
        corners = apply_affine(boxes[b].reshape(-1, 2, 2), A[b])      # (k, 2, 2)
        xy1, xy2 = corners.min(1), corners.max(1)                     # a flip may swap corners
        bbox = np.concatenate([xy1, xy2 - xy1], 1).tolist()           # (k, 4) x y w h
        if kps is not None:
            pts = apply_affine(kps[b], A[b])                          # (k, K, 2)
            flat = np.concatenate([pts, np.ones_like(pts[..., :1])], -1).reshape(len(pts), -1)
        for i in range(len(bbox)):
            r = {"image_id": img_id, "category_id": int(cat_ids[classes[b, i]]),
                 "bbox": bbox[i], "score": float(scores[b, i])}
            if kps is not None:
                r["keypoints"] = flat[i].tolist()
            results.append(r)
    return results


def coco_evaluate(coco_gt, results, task, img_ids=None, iou_type=None, cat_ids=None,
                  kpt_oks_sigmas=None, verbose=False):
    """COCOeval of `results` (a list of result dicts) against coco_gt on img_ids (default:
    every ground-truth image; images without a detection then count as misses) and cat_ids
    (default: every category for bbox, those naming keypoints for keypoints).

    iou_type: "bbox" (default for det) or "keypoints" (default for pose). Returns the stats
    array: 12 numbers for bbox (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm,
    ARl), 10 for keypoints (no small range); all zeros when there are no detections.
    kpt_oks_sigmas: per-joint OKS sigmas when the joints are not COCO's 17 (e.g. a subset).
    """
    iou_type = iou_type or {"det": "bbox", "pose": "keypoints"}[task]
    img_ids = sorted(coco_gt.getImgIds()) if img_ids is None else [int(i) for i in img_ids]
    unknown = sorted({r["image_id"] for r in results} - set(coco_gt.imgs))
    if unknown:
        raise ValueError(f"results name image ids missing from the ground truth: {unknown[:10]}")
    wanted = set(img_ids)
    results = [r for r in results if r["image_id"] in wanted]
    if not results:                                  # loadRes([]) raises IndexError
        return np.zeros(NUM_STATS[iou_type])
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        E = COCOeval(coco_gt, coco_dt, iou_type)
        E.params.imgIds = img_ids
        if cat_ids is not None or iou_type == "keypoints":
            E.params.catIds = sorted(cat_ids if cat_ids is not None else
                                     [c["id"] for c in coco_gt.cats.values() if c.get("keypoints")])
        if kpt_oks_sigmas is not None:
            E.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, np.float64)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats
