"""The README's figures from real runs, in one command (paper Figs. 4 and 5).

    python -m analysis.figures --mdn runs/pose_m3 --base runs/pose_m0 --out docs

writes, from the runs' logs and checkpoints:
  convergence.png  Fig. 4: validation AP per epoch and per minute of MDN_M and the base
                   (the runs need --eval-every to have more than the last point)
  predictions.png  Fig. 5: test-split images with the MDN_M run's predictions coloured by
                   mixture component, pose with each joint's 1-std ellipse

    python -m analysis.figures --overfit runs/overfit/pose_s256 runs/overfit/det_s256_600 --out docs

writes overfit.png instead: the training-split AP per epoch and per minute of the
"overfit a small set first" runs (train.py --no-augment on the real sample, RESULTS.md).
"""
import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from analysis import plots
from coco_data import run_split
from inference import Inference, network_forward, predict
from model import load_model
from util.rundir import read_log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdn", help="an MDN run folder (with ckpt.pt and log.jsonl)")
    p.add_argument("--base", help="the single-mode base run folder to compare with in Fig. 4")
    p.add_argument("--out", default="docs", help="output folder (default docs)")
    p.add_argument("--examples", type=int, default=3, help="images in predictions.png (default 3)")
    p.add_argument("--overfit", nargs="+", metavar="RUN", help="instead: overfit.png from these run folders' logs "
                                                               "(their validation split is their training split)")
    args = p.parse_args(argv)
    if not (args.mdn or args.overfit):
        p.error("give --mdn RUN (Figs. 4 and 5) or --overfit RUN [RUN ...]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.overfit:
        runs = {}
        for run in args.overfit:
            cfg = json.loads((Path(run) / "config.json").read_text())
            n = len(json.loads(Path(cfg["train"]["ann"]).read_text())["images"])
            task = cfg["model"]["task"]
            runs[f"{task} ({'keypoint' if task == 'pose' else 'box'} AP), {n} images, "
                 f"{cfg['train']['input_size']} px"] = read_log(run)
        print("wrote", plots.convergence(runs, out / "overfit.png", "overfit the real sample (--no-augment)",
                                             split="training images"))
        return
    model, state = load_model(Path(args.mdn) / "ckpt.pt")
    runs = {f"MDN_{model.cfg.m}": read_log(args.mdn)}
    if args.base:
        runs["base (L1)"] = read_log(args.base)
    plots.convergence(runs, out / "convergence.png", f"Fig. 4: {model.cfg.task}, {model.cfg.arch}")
    cfg = state["train_config"]
    ds = run_split(cfg, model.cfg.task, "test") or run_split(cfg, model.cfg.task, "val")
    ds.image_ids = ds.image_ids[:40]                     # enough to pick the examples from
    inference = Inference()
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    results = predict(network_forward(model, torch.device("cpu"), inference), loader, ds.cat_ids, inference, False)
    plots.examples(results["max"], ds.coco, model.cfg.task, ds.image_ids, ds.load_image, out / "predictions.png",
                   args.examples, getattr(ds, "keypoint_names", None), score_thresh=0.3, kpt_scale=ds.oks_sigmas)
    # 128 colours keep the figure small in git (650 KB -> about 160 KB) without visible loss
    Image.open(out / "predictions.png").convert("RGB").quantize(128).save(out / "predictions.png", optimize=True)
    print(f"wrote {out / 'convergence.png'} and {out / 'predictions.png'}")


if __name__ == "__main__":
    main()
