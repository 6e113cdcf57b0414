"""COCO result dicts -> COCOeval statistics (§4: the AP of Tables 1, 3).

The last step of CenterNet's pipeline (its run_eval): pycocotools' COCOeval on result dicts
in original image pixels (inference.to_coco_results writes them from decoded detections).

Differs from the official code: scores are not rounded (rounding to 2 decimals creates
ties that change AP; inference.to_coco_results keeps them whole); "no detections" gives
all-zero statistics instead of pycocotools' IndexError; loadRes gets copies (it edits the
dicts it is given).
"""
import contextlib
import copy
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

NUM_STATS = {"bbox": 12, "keypoints": 10}


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
