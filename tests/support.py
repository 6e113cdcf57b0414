"""What several test files share: the real COCO sample's path and random head outputs."""
from pathlib import Path

import pytest
import torch

from model import ModelConfig, head_channels

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "coco_sample"   # ../shared next to the checkout
SAMPLE_ANN = {"pose": SAMPLE / "annotations" / "person_keypoints_sample.json",
              "det": SAMPLE / "annotations" / "instances_sample.json"}
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real COCO sample not found at {SAMPLE}")


def random_outputs(task, m, num_classes=3, num_joints=4, B=2, H=6, W=7, seed=0):
    """Random outputs of one stack, as model.Heads emits them (sigma > 0)."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(task=task, m=m, num_classes=num_classes, num_joints=num_joints)
    out = {k: torch.randn(B, c, H, W, generator=g) for k, c in head_channels(cfg).items()}
    if "mdn_sigma" in out:
        out["mdn_sigma"] = out["mdn_sigma"].exp()
    return out
