"""Muon for convolution weights, Adam for the rest: train.py's --optimizer muon (not in the paper,
which trains with Adam, §4.1; a speedrun lever, ../shared/notes/speedrun.md).

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", Liu et al. 2025) replaces a weight
matrix's momentum by its nearest semi-orthogonal matrix (five Newton-Schulz steps) before the
update, so every direction of the layer moves at the same rate. torch.optim.Muon does exactly
this for 2-D parameters only; a convolution's (C_out, C_in, k, k) weight is the matrix
(C_out, C_in * k * k), so `ConvMuon` flattens the momentum, orthogonalises it and reshapes the
update back. On a 2-D parameter it is torch.optim.Muon's update rule, with the Newton-Schulz
steps rearranged (`orthogonalise`) for a CPU: float32 instead of bfloat16, the short side's Gram
matrix instead of the whole matrix, and one batched product for all weights of a shape; tests/
test_muon.py checks it against torch's iteration in float64 and against torch.optim.Muon.

Which weights: every convolution of the network's inside. The first layer (3 input channels),
the depthwise up-sampling filters (1 input channel per group) and the heads' last 1x1
convolutions (the outputs) are not hidden-layer matrices and stay with Adam, as do biases and
BatchNorm. The update's scale follows Moonshot's rule (0.2 * sqrt(max(rows, cols))), so the
Adam learning rate and schedule of the recipe are used for both optimisers unchanged. Momentum
0.95 with Nesterov's correction, as torch's defaults; no weight decay, as the paper's Adam.
"""
import math

import torch

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)   # torch.optim.Muon's (Keller Jordan's quintic)


def orthogonalise(G, steps=5, eps=1e-7):
    """G (..., rows, cols) -> about U V^T of each matrix's SVD: torch.optim.Muon's Newton-Schulz
    steps X <- (a + b A + c A^2) X with A = X X^T, run on the short side's Gram matrix.

    Every step multiplies X on the left by a polynomial of A, so X_k = Q_k X_0 and
    A_k = Q_k A_0 Q_k^T with A_0 = X_0 X_0^T: the steps need only (s, s) products (s = the
    short side) and X's long side is touched twice, not ten times (3x fewer operations for a
    3x3 convolution's (C, 9 C) matrix). Equal to torch's iteration in exact arithmetic
    (tests/test_muon.py checks it in float64); run in float32, where torch runs bfloat16, which
    on a CPU is no faster for matrices this small. A stack (N, rows, cols) of same-shaped
    matrices goes through batched products."""
    if G.size(-2) > G.size(-1):
        return orthogonalise(G.mT, steps, eps).mT
    a, b, c = NS_COEFFICIENTS
    X = G.to(torch.promote_types(G.dtype, torch.float32))     # float64 stays (the tests' oracle)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)   # spectral norm <= Frobenius norm <= 1
    A0 = X @ X.mT                                               # (..., s, s)
    eye = torch.eye(A0.size(-1), dtype=A0.dtype, device=A0.device)
    Q, A = eye, A0
    for k in range(steps):
        Q = (a * eye + b * A + c * (A @ A)) @ Q                 # Q_{k+1} = p(A_k) Q_k, (..., s, s)
        if k < steps - 1:
            A = Q @ A0 @ Q.mT                                   # A_{k+1}
    return Q @ X                                                # (..., s, l)


class ConvMuon(torch.optim.Optimizer):
    """Muon on parameters of two or more dimensions, each seen as (shape[0], rest)."""

    def __init__(self, params, lr=1e-3, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon needs a weight of 2 or more dimensions, got {tuple(p.shape)}")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu, lr = group["momentum"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad.reshape(p.shape[0], -1) for p in params]     # (C_out, C_in * k * k) each
            for p, g in zip(params, grads):
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(g)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            # one batched Newton-Schulz per matrix shape: a network has few distinct shapes
            by_shape = {}
            for i, u in enumerate(updates):
                by_shape.setdefault(tuple(u.shape), []).append(i)
            for shape, idx in by_shape.items():
                orth = orthogonalise(torch.stack([updates[i] for i in idx]), group["ns_steps"])   # (N, rows, cols)
                scale = 0.2 * math.sqrt(max(shape))                     # Moonshot's: Adam's lr carries over
                for i, o in zip(idx, orth):
                    params[i].add_(o.reshape(params[i].shape).to(params[i].dtype), alpha=-lr * scale)


def is_hidden_conv(name, p):
    """A weight Muon should take: a convolution inside the network (see the docstring)."""
    return p.ndim == 4 and p.shape[1] > 3 and not (name.startswith("heads.") and name.endswith(".2.weight"))


class MuonAdam:
    """ConvMuon for the hidden convolutions, Adam for everything else, stepped together. The
    param_groups of both are exposed as one list, so the lr schedule sets every group."""

    def __init__(self, model, lr):
        named = list(model.named_parameters())
        self.muon = ConvMuon([p for n, p in named if is_hidden_conv(n, p)], lr=lr)
        self.adam = torch.optim.Adam([p for n, p in named if not is_hidden_conv(n, p)], lr=lr, foreach=True)
        self.param_groups = self.muon.param_groups + self.adam.param_groups

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none)
        self.adam.zero_grad(set_to_none)

    def step(self):
        self.muon.step()
        self.adam.step()

    def state_dict(self):
        """One state dict as a single optimiser's: Adam's parameter indices follow Muon's."""
        muon, adam = self.muon.state_dict(), self.adam.state_dict()
        shift = sum(len(g["params"]) for g in muon["param_groups"])
        groups = muon["param_groups"] + [dict(g, params=[i + shift for i in g["params"]]) for g in adam["param_groups"]]
        return {"state": {**muon["state"], **{i + shift: s for i, s in adam["state"].items()}}, "param_groups": groups}

    def load_state_dict(self, state):
        n = len(self.muon.param_groups)
        shift = sum(len(g["params"]) for g in state["param_groups"][:n])
        self.muon.load_state_dict({"state": {i: s for i, s in state["state"].items() if i < shift},
                                   "param_groups": state["param_groups"][:n]})
        self.adam.load_state_dict({"state": {i - shift: s for i, s in state["state"].items() if i >= shift},
                                   "param_groups": [dict(g, params=[i - shift for i in g["params"]])
                                                    for g in state["param_groups"][n:]]})


OPTIMIZERS = ("adam", "muon")


def build_optimizer(model, name, lr):
    """train.py's --optimizer: "adam" (the paper's) or "muon" (MuonAdam), both at lr."""
    return MuonAdam(model, lr) if name == "muon" else torch.optim.Adam(model.parameters(), lr=lr)
