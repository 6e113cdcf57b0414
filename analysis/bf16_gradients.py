"""How far bf16 autocast moves the training gradient, loss part by loss part (Eq. 6).

    python -m analysis.bf16_gradients runs/nb03/det_m3/ckpt.pt runs/nb04/pose_m3/ckpt.pt

For each checkpoint: one batch of its own training images (the deterministic evaluation
transform), the gradient of every weighted loss part of Eq. (6) with respect to the backbone's
parameters, once in float32 and once under bf16 autocast (the heads' last layers and the
losses stay float32, as in training). Printed per part: the float32 gradient's norm, the
relative error |g_bf16 - g_fp32| / |g_fp32| and the cosine between the two; then the same for
a freshly initialised network of the same configuration (the first steps of a run).
RESULTS.md ("Precision: bf16 on the CPU") reads these numbers.
"""
import argparse

import torch

import mdn_dense as md
from coco_data import run_split
from model import build_model, load_model, model_config_of


def single_stack(outputs):
    """The one output dict of a single-stack network (small_dla, dla34)."""
    if len(outputs) != 1:
        raise ValueError("one output stack expected (small_dla, dla34), not an hourglass")
    return outputs[0]


def flat_gradient(loss, params):
    """d loss / d params as one flat vector (zeros where a parameter does not contribute)."""
    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten() for gi, p in zip(g, params)])


def part_gradients(model, batch, kpt_scale, bf16):
    """{part: the backbone gradient of λ_part * L_part, flattened} and "total", for one
    forward pass in float32 or under bf16 autocast. Single-output networks only."""
    x = batch["input"].contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = single_stack(model(x))
    parts = md.stack_loss(out, batch, kpt_scale)
    lam = md.LossWeights().lambdas(mixture=md.num_components(out) > 0)
    params = model.backbone_parameters()
    grads = {name: flat_gradient(lam[name] * value, params) for name, value in parts.items()}
    grads["total"] = sum(grads.values())
    return grads


def compare(model, batch, kpt_scale):
    """{part: (|g_fp32|, relative error, cosine)} of bf16 against float32 gradients."""
    model = model.train().to(memory_format=torch.channels_last)
    exact, rounded = (part_gradients(model, batch, kpt_scale, bf16) for bf16 in (False, True))
    return {k: (exact[k].norm().item(),
                ((rounded[k] - exact[k]).norm() / exact[k].norm().clamp_min(1e-30)).item(),
                torch.nn.functional.cosine_similarity(rounded[k], exact[k], dim=0).item())
            for k in exact}


def checkpoint_batch(state, n):
    """The first n training images of the run that wrote state, as one batch of targets."""
    task = state["model_config"]["task"]
    ds = run_split(state["train_config"], task, "train")
    batch = torch.utils.data.default_collate([ds[i] for i in range(n)])
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}, ds.oks_sigmas.tolist() if task == "pose" else None


def checkpoint_runs(doc, argv, images=16):
    """The command line shared by the gradient analyses (checkpoints, --images, --seed,
    --threads): yields (path, label, network, batch, kpt_scale) for each checkpoint's trained
    network and a fresh one of the same configuration, on a batch of its training images."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="ckpt.pt files of train.py runs (small_dla or dla34)")
    p.add_argument("--images", type=int, default=images, help=f"training images in the batch (default {images})")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh network (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        try:
            model, state = load_model(path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: {e}") from None
        batch, kpt_scale = checkpoint_batch(state, args.images)
        torch.manual_seed(args.seed)
        fresh = build_model(model_config_of(state["model_config"]))
        for label, net in (("trained", model), (f"fresh, seed {args.seed}", fresh)):
            yield path, label, net, batch, kpt_scale


def main(argv=None):
    for path, label, net, batch, kpt_scale in checkpoint_runs(__doc__, argv):
        print(f"{path} ({label}): bf16 vs float32 backbone gradient")
        for part, (norm, err, cos) in compare(net, batch, kpt_scale).items():
            print(f"  {part:<10} |g| {norm:9.3g}  relative error {err:6.3f}  cosine {cos:7.4f}")


if __name__ == "__main__":
    main()
