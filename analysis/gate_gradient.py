"""How much of the mixture loss's gradient reaches the backbone through the gate (Eq. 5).

    python -m analysis.gate_gradient runs/nb04/pose_m3/ckpt.pt [more ckpt.pt ...]

Eq. (5), -log sum_m alpha_m N(t | mu_m, sigma_m), sends gradient into the backbone along
two paths: through the means and sigmas of the components, and through the mixing
coefficients alpha (the gate). Only the gate needs features that tell the modes apart (a
front-view and a back-view component can each place their joints without knowing which
view the image shows), so a gate that fails to pick the right component points at a small
share of the gradient on that path. For each checkpoint, on one batch of its own training
images (the evaluation transform) and for a freshly initialised network of the same
configuration: the norm of the backbone gradient of λ_hps * Eq. (5) through the gate alone
(mu and sigma detached), through mu and sigma alone (alpha detached), and their ratio.
RESULTS.md ("Where does the AP go?") reads these numbers; `train.py --gate-grad` scales the
gate's path (mdn_dense.LossWeights.gate_grad).
"""
import torch

import mdn_dense as md
from analysis.bf16_gradients import checkpoint_runs, flat_gradient, single_stack


def path_gradients(model, batch, kpt_scale, weights=None):
    """{"gate": g, "means and sigmas": g}: the backbone gradient (flattened) of the weighted
    mixture loss (λ_hps for pose, λ_wh for detection) through each path; the two add up to
    the loss's whole backbone gradient. Single-output networks only."""
    weights = weights or md.LossWeights()
    part = md.REGRESSION_KEY[model.cfg.task]
    lam = weights.lambdas(mixture=True)[part]
    params = model.backbone_parameters()
    out = single_stack(model(batch["input"]))               # one forward pass serves both paths
    grads = {}
    for path, keep in (("gate", {"mdn_logits"}), ("means and sigmas", {part, "mdn_sigma"})):
        alone = {k: (v if k in keep else v.detach()) for k, v in out.items()}
        grads[path] = flat_gradient(lam * md.mixture_loss(alone, batch, kpt_scale, weights.gate_grad), params)
    return grads


def main(argv=None):
    for path, label, net, batch, kpt_scale in checkpoint_runs(__doc__, argv, images=32):
        if net.cfg.m == 0:
            raise SystemExit(f"{path}: an L1 base (m = 0) has no gate")
        n = {k: g.norm().item() for k, g in path_gradients(net.train(), batch, kpt_scale).items()}
        print(f"{path} ({label}): backbone |g| through the gate {n['gate']:.3g}, through mu and sigma "
              f"{n['means and sigmas']:.3g} (x{n['means and sigmas'] / n['gate']:.0f})")


if __name__ == "__main__":
    main()
