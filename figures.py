"""The README's figures from real runs, in one command (paper Figs. 4 and 5).

    python figures.py --mdn runs/pose_m3 --base runs/pose_m0 --out docs

writes, from the runs' logs and checkpoints:
  convergence.png  Fig. 4: validation AP per epoch and per minute of MDN_M and the base
                   (the runs need --eval-every to have more than the last point)
  predictions.png  Fig. 5: test-split images with the MDN_M run's predictions coloured by
                   mixture component, pose with each joint's 1-std ellipse
"""
import argparse
import json
from pathlib import Path

import torch
from PIL import Image

import plots
from coco_data import CocoDataset
from evaluate import Inference, network_forward, predict
from model import load_model


def history(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdn", required=True, help="an MDN run folder (with ckpt.pt and log.jsonl)")
    p.add_argument("--base", help="the single-mode base run folder to compare with in Fig. 4")
    p.add_argument("--out", default="docs", help="output folder (default docs)")
    p.add_argument("--examples", type=int, default=3, help="images in predictions.png (default 3)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, state = load_model(Path(args.mdn) / "ckpt.pt")
    runs = {f"MDN_{model.cfg.m}": history(args.mdn)}
    if args.base:
        runs["base (L1)"] = history(args.base)
    plots.convergence(runs, out / "convergence.png", f"Fig. 4: {model.cfg.task}, {model.cfg.arch}")
    cfg = state["train_config"]
    ann, images = (cfg["test_ann"], cfg["test_images"]) if cfg.get("test_ann") else (cfg["val_ann"], cfg["val_images"])
    ds = CocoDataset(ann, images, model.cfg.task, input_size=cfg["input_size"], oks_sigmas=cfg.get("oks_sigmas"))
    ds.image_ids = ds.image_ids[:40]                     # enough to pick the examples from
    inference = Inference()
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    results = predict(network_forward(model, torch.device("cpu"), inference), loader, ds.cat_ids, inference, False)
    plots.examples(results["max"], ds.coco, model.cfg.task, ds.image_ids, ds.load_image, out / "predictions.png",
                   args.examples, getattr(ds, "keypoint_names", None), score_thresh=0.3)
    # 128 colours keep the figure small in git (650 KB -> about 160 KB) without visible loss
    Image.open(out / "predictions.png").convert("RGB").quantize(128).save(out / "predictions.png", optimize=True)
    print(f"wrote {out / 'convergence.png'} and {out / 'predictions.png'}")


if __name__ == "__main__":
    main()
