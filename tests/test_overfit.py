"""It learns real photos (reduced): train.py's whole path (COCO loader, targets, the mixture
losses of Eq. (6), Adam, checkpoint, evaluation) on the four real COCO photos of the shared
sample's keypoint file, and the model fits the images it was trained on: the "overfit a
small set first" check, with `--no-augment` so that every epoch shows the network the
letterboxed images it is scored on.

small_dla, pose, MDN_3, 128 px, 200 one-step epochs (batch 4 = the whole set), lr 2.5e-3
with the drop at epoch 180, fp32, one thread: enough epochs for keypoint AP to pass 0.9 on
every seed tried (RESULTS.md has the curve and the full check: 256 px, 600 epochs, and
detection on the 44 photos of the instances file).
"""
import torch

import train
from coco_data import CocoDataset
from coco_eval import coco_evaluate
from inference import Inference, network_forward, predict
from model import load_model
from support import SAMPLE, SAMPLE_ANN, needs_sample

SIZE, EPOCHS = 128, 200
AP_MIN = 0.9            # "fits the images it trained on": far above a model that has not


@needs_sample
def test_pose_model_fits_four_real_photos(tmp_path, capsys):
    out = tmp_path / "run"
    stats = train.main(["--task", "pose", "--m", "3", "--arch", "small_dla",
                        "--ann", str(SAMPLE_ANN["pose"]), "--images", str(SAMPLE / "images"),
                        "--input-size", str(SIZE), "--no-augment",
                        "--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "2.5e-3", "--lr-steps", "180",
                        "--precision", "fp32", "--threads", "1", "--seed", "0", "--out", str(out)])
    capsys.readouterr()
    model, state = load_model(out / "ckpt.pt")
    first, last = state["history"][0]["total"], state["history"][-1]["total"]
    assert last < 0.05 * first, f"total loss {first:.1f} -> {last:.1f}: it did not fit"  # seed 0: 63.9 -> 1.09
    ds = CocoDataset(SAMPLE_ANN["pose"], SAMPLE / "images", "pose", train=False, input_size=SIZE)
    inference = Inference()
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    results = predict(network_forward(model, torch.device("cpu"), inference), loader, ds.cat_ids, inference,
                      progress=False)["max"]
    box_ap = coco_evaluate(ds.coco, results, "pose", ds.image_ids, iou_type="bbox")[0]
    keypoint_ap = stats["All"][0]
    print(f"keypoint AP {keypoint_ap:.3f}, person box AP {box_ap:.3f} on the 4 training photos")
    assert keypoint_ap >= AP_MIN, f"keypoint AP {keypoint_ap:.3f} on its own training photos"
    assert box_ap >= AP_MIN, f"person box AP {box_ap:.3f} on its own training photos"
