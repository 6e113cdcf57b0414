"""Figures of the component analyses: the paper's Fig. 2 (object scale per mixture component
against the ground truth, §4.3.1) and Fig. 5 (sample predictions coloured by component; for
pose, skeletons with the uncertainty ellipses of Eq. (4)).

Drawn on matplotlib Figure objects (no pyplot, so importing this module never switches the
backend of a notebook); the draw_* functions take an Axes, so notebooks can use them inline.

Uncertainty ellipses: component m predicts per-axis sigmas (sigma_x, sigma_y) in output-map
pixels, shared by all joints; joint j's standard deviation is sigma * k_j (Eq. (4) with the
per-joint scale k_j = COCO OKS sigma / 10). The ellipse is the 1-std contour: radii
sigma_x * k_j and sigma_y * k_j output-map pixels, times the result's out_px (original
pixels per output pixel, written by evaluate.py; the stride 4 when absent, i.e. the image
is taken to be the network input).
"""
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Rectangle

from annotations import default_oks_sigmas, joint_side, skeleton_pairs

COMPONENT_COLOURS = ["tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple",
                     "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]  # Fig. 5: blue, green, red
SIDE_COLOURS = {"left": "#ff8c00", "right": "#00bfff", None: "#f0f0f0"}  # orange left, sky-blue right limbs


def component_colour(component):
    """Colour of a 0-based component index."""
    return COMPONENT_COLOURS[int(component) % len(COMPONENT_COLOURS)]


def component_legend(fig, components):
    """One legend entry per 0-based component index drawn, in the colours of every figure."""
    handles = [Rectangle((0, 0), 1, 1, fill=False, ec=component_colour(c), label=f"component {c + 1}")
               for c in sorted(components)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)


def scale_distribution(fig2, path):
    """Fig. 2 from analysis.component_scale's output: histograms of sqrt(area) per component
    (named in scale order) and of the ground truth, log-spaced bins, and box plots with each
    one's share of the matched predictions under its name."""
    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    names = [r["name"] for r in fig2["rows"]] + ["GT"]
    data = {n: np.asarray(fig2["scales"][n]) for n in names if len(fig2["scales"][n])}
    if not data:
        ax1.text(0.5, 0.5, "no data", ha="center", transform=ax1.transAxes)
    else:
        values = np.concatenate(list(data.values()))
        bins = np.geomspace(max(values.min(), 1.0), max(values.max(), 2.0), 25)
        for i, (n, v) in enumerate(data.items()):
            colour = "black" if n == "GT" else component_colour(i)
            ax1.hist(v, bins, density=True, histtype="step", lw=2 if n == "GT" else 1.5, color=colour,
                     label="ground truth" if n == "GT" else f"component {n}")
        ax1.set_xscale("log")
        shares = {r["name"]: r["share"] for r in fig2["rows"]}
        ax2.boxplot(list(data.values()), showfliers=False)
        ax2.set_xticks(range(1, len(data) + 1),
                       [n if n == "GT" else f"{n}\n{100 * shares[n]:.1f}%" for n in data])
        ax2.set_yscale("log")
        ax1.legend(fontsize=8)
    ax1.set(xlabel="object scale sqrt(area) [px]", ylabel="density",
            title=f"Pearson r: scale {fig2['pearson_scale']:.2f}, category {fig2['pearson_category']:.2f}")
    ax2.set(ylabel="sqrt(area) [px]", title="matched predictions per component vs GT")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def draw_detections(ax, results, score_thresh=0.3):
    """Boxes of results with score >= score_thresh, coloured by component."""
    for r in results:
        if r["score"] >= score_thresh:
            x, y, w, h = r["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1.5, ec=component_colour(r.get("component", 0))))


def draw_poses(ax, results, keypoint_names, skeleton=(), score_thresh=0.3, stride=4, kpt_scale=None):
    """Skeletons (an edge only when both joints are visible, v > 0; left and right limbs in
    different colours), person boxes and, for results that carry "sigma", 1-std uncertainty
    ellipses coloured by component. skeleton: 0-based joint pairs; kpt_scale: Eq. (4)'s k_j,
    the dataset's OKS sigmas (default: COCO's, for COCO's joint names only)."""
    K = len(keypoint_names)
    k = kpt_scale if kpt_scale is not None else default_oks_sigmas(keypoint_names)
    if k is None and any("sigma" in r for r in results):
        raise ValueError(f"drawing sigma ellipses of {K} joints that are not COCO's needs their OKS sigmas (kpt_scale)")
    k = np.asarray(k if k is not None else np.ones(K), np.float64)
    sides = [joint_side(n) for n in keypoint_names]
    for r in results:
        if r["score"] < score_thresh:
            continue
        colour = component_colour(r.get("component", 0))
        kps = np.asarray(r["keypoints"], np.float64).reshape(K, 3)
        for a, b in skeleton:
            if kps[a, 2] > 0 and kps[b, 2] > 0:
                side = {sides[a], sides[b]} - {None}   # a left-right edge (hips, shoulders) is neither
                side = side.pop() if len(side) == 1 else None
                ax.plot(kps[[a, b], 0], kps[[a, b], 1], color=SIDE_COLOURS[side], lw=2)
        if "sigma" in r:
            sx, sy = np.asarray(r["sigma"]) * r.get("out_px", stride)    # original pixels
            for j in np.flatnonzero(kps[:, 2] > 0):
                ax.add_patch(Ellipse(kps[j, :2], 2 * sx * k[j], 2 * sy * k[j], fill=False, lw=1, ec=colour))
        x, y, w, h = r["bbox"]
        ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1, ls="--", ec=colour))


def examples(results, coco_gt, task, img_ids, load_image, path, num=4, keypoint_names=None, score_thresh=0.3,
             per_image=20, kpt_scale=None):
    """Fig. 5: the `num` images of img_ids with the most predictions of score >= score_thresh
    (ties: the first), drawn side by side with at most `per_image` predictions each (the
    best; COCO's keypoint evaluation also keeps 20); load_image(image_id) -> PIL image or array;
    kpt_scale: the dataset's OKS sigmas (draw_poses)."""
    confident = {}
    for r in results:
        if r["score"] >= score_thresh:
            confident[r["image_id"]] = confident.get(r["image_id"], 0) + 1
    chosen = sorted(img_ids, key=lambda i: -confident.get(i, 0))[:num]
    if task == "pose":
        cat = next(c for c in coco_gt.dataset["categories"] if c.get("keypoints"))
        skeleton = skeleton_pairs(cat.get("skeleton", []))
    fig = Figure(figsize=(4 * max(len(chosen), 1), 4.3))
    axes = np.atleast_1d(fig.subplots(1, max(len(chosen), 1)))
    drawn = set()
    for ax, img_id in zip(axes, chosen):
        ax.imshow(load_image(img_id))
        mine = sorted((r for r in results if r["image_id"] == img_id), key=lambda r: -r["score"])[:per_image]
        drawn |= {r.get("component", 0) for r in mine if r["score"] >= score_thresh}
        if task == "det":
            draw_detections(ax, mine, score_thresh)
        else:
            draw_poses(ax, mine, keypoint_names, skeleton, score_thresh, kpt_scale=kpt_scale)
        ax.set_title(f"image {img_id}: {confident.get(img_id, 0)} predictions >= {score_thresh}", fontsize=9)
        ax.axis("off")
    component_legend(fig, drawn)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=100)
    return path


def plot_history(history, path, title=""):
    """Loss parts and AP per epoch (the paper's Fig. 4 is drawn from such logs). Draws on
    a bare Figure, so it neither needs pyplot nor changes a notebook's backend."""
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [h["epoch"] + 1 for h in history]
    for key in [k for k in history[-1] if k not in ("epoch", "lr", "time") and not k.startswith("AP")]:
        ax1.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
    ax1.set(xlabel="epoch", ylabel="loss", title=title)
    ax1.legend(fontsize=7)
    ap = [(h["epoch"] + 1, h["AP"]) for h in history if "AP" in h]
    if ap:
        ax2.plot(*zip(*ap), "o-", label="All")
    ref = [(h["epoch"] + 1, h["AP_refined"]) for h in history if "AP_refined" in h]
    if ref:
        ax2.plot(*zip(*ref), "s--", label="All, refined (hm_hp)")
    ax2.set(xlabel="epoch", ylabel="COCO AP", ylim=(0, 1))
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def convergence(runs, path, title="Fig. 4: convergence", split="validation"):
    """The paper's Fig. 4 from train.py logs: validation AP against the epoch and against the
    wall time, one line per run. runs: {label: history (the log.jsonl lines)}; only epochs
    that were evaluated (--eval-every) have an AP. split names the evaluated split on the axes."""
    fig = Figure(figsize=(10, 3.6))
    by_epoch, by_time = fig.subplots(1, 2)
    for label, history in runs.items():
        clock = np.cumsum([h["time"] for h in history]) / 60
        done = [(h["epoch"] + 1, t, h["AP"]) for h, t in zip(history, clock) if "AP" in h]
        if done:
            e, t, ap = zip(*done)
            line, = by_epoch.plot(e, ap, "o-", label=label)
            by_time.plot(t, ap, "o-", color=line.get_color(), label=label)
    by_epoch.set(xlabel="epoch", ylabel=f"COCO AP ({split})", ylim=(0, 1), title=title)
    by_time.set(xlabel="training time (min, evaluation excluded)", ylabel=f"COCO AP ({split})", ylim=(0, 1))
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
