"""Predictions to ground truth: the one IoU, the one OKS and the greedy matching that every
analysis uses (components.py's Fig. 2 and Tables 4-6, uncertainty.py's calibration and the
"Oracle comp." gate).

Similarities follow COCOeval's own definitions, so an analysis pairs what the evaluation
scores: IoU of [x, y, w, h] boxes (decode.box_iou on corners), and pycocotools' computeOks,
exp(-d^2 / (2 (2 sigma_j)^2 area)) averaged over the ground truth's annotated joints (v > 0),
with the DATASET's own per-joint sigmas (pycocotools' convention: COCO's nose is 0.026;
CocoDataset.oks_sigmas). Matching is greedy, highest score first: each result takes the
unmatched ground truth of its image with the highest similarity above the threshold.
Shapes: n results, g ground truths, K joints.
"""
import numpy as np

from decode import box_iou


def iou_matrix(a, b):
    """IoU of boxes a (n, 4) with boxes b (g, 4), both [x, y, w, h] -> (n, g)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    corners = lambda x: np.concatenate([x[:, :2], x[:, :2] + x[:, 2:]], 1)
    return box_iou(corners(a), corners(b))


def oks_matrix(pred, gt, areas, sigmas):
    """pycocotools' OKS for every pair: pred (n, K*3 or K*2) joints, gt (g, K*3), areas (g,),
    sigmas (K,) in pycocotools' convention -> (n, g); 0 for a ground truth without annotated
    joints."""
    sigmas = np.asarray(sigmas, np.float64)
    K = len(sigmas)
    gt = np.asarray(gt, np.float64).reshape(-1, K, 3)
    pred = np.asarray(pred, np.float64)
    pred = pred.reshape(-1, K, pred.shape[-1] // K if pred.size else 3)[..., :2]
    d2 = ((pred[:, None] - gt[None, :, :, :2]) ** 2).sum(-1)            # (n, g, K)
    e = d2 / ((2 * sigmas) ** 2 * (np.asarray(areas, np.float64)[None, :, None] + np.spacing(1)) * 2)
    seen = gt[None, :, :, 2] > 0                                         # (1, g, K)
    return (np.exp(-e) * seen).sum(-1) / np.maximum(seen.sum(-1), 1)


def ground_truths(coco_gt, img_ids=None, keypoints=False):
    """Non-crowd ground truth (with at least one annotated joint when keypoints)."""
    ids = coco_gt.getImgIds() if img_ids is None else img_ids
    anns = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids)) if not a.get("iscrowd", 0)]
    return [a for a in anns if a.get("num_keypoints", 0) > 0] if keypoints else anns


def greedy_match(results, gts, similarity, thresh):
    """Greedy one-to-one matching, highest score first (ties: the lower ground-truth id):
    each result takes the unmatched ground truth of its image with the highest similarity
    >= thresh. similarity(results, gts) -> (n, g) for one image's lists. Returns (result, gt)
    pairs."""
    by_image = {}
    for g in gts:
        by_image.setdefault(g["image_id"], []).append(g)
    for mine in by_image.values():
        mine.sort(key=lambda g: g["id"])
    used, pairs = set(), []
    for r in sorted(results, key=lambda r: -r["score"]):
        mine = by_image.get(r["image_id"], [])
        if not mine:
            continue
        sim = similarity([r], mine)[0]
        best = max((j for j in range(len(mine)) if mine[j]["id"] not in used and sim[j] >= thresh),
                   key=lambda j: sim[j], default=None)        # max keeps the first (lowest id) of ties
        if best is not None:
            used.add(mine[best]["id"])
            pairs.append((r, mine[best]))
    return pairs


def box_similarity(results, gts):
    """IoU for pairs of the same category, -1 otherwise -> (n, g)."""
    iou = iou_matrix([r["bbox"] for r in results], [g["bbox"] for g in gts])
    same = np.array([[r["category_id"] == g["category_id"] for g in gts] for r in results], bool)
    return np.where(same.reshape(iou.shape), iou, -1.0)


def keypoint_similarity(sigmas):
    """OKS with the dataset's sigmas -> a similarity(results, gts) for greedy_match."""
    if sigmas is None:
        raise ValueError("keypoint matching needs the dataset's OKS sigmas (CocoDataset.oks_sigmas)")
    return lambda results, gts: oks_matrix([r["keypoints"] for r in results], [g["keypoints"] for g in gts],
                                           [g["area"] for g in gts], sigmas)


def match_boxes(results, coco_gt, score_thresh=0.3, iou_thresh=0.5, img_ids=None):
    """(result, gt) pairs: same category, IoU >= iou_thresh, results with score >= score_thresh."""
    results = [r for r in results if r["score"] >= score_thresh]
    return greedy_match(results, ground_truths(coco_gt, img_ids), box_similarity, iou_thresh)


def match_keypoints(results, coco_gt, sigmas, score_thresh=0.5, oks_thresh=0.5, img_ids=None, gts=None):
    """(result, gt) pairs by OKS >= oks_thresh (the dataset's sigmas), results with score >=
    score_thresh."""
    results = [r for r in results if r["score"] >= score_thresh]
    gts = ground_truths(coco_gt, img_ids, keypoints=True) if gts is None else gts
    return greedy_match(results, gts, keypoint_similarity(sigmas), oks_thresh)
