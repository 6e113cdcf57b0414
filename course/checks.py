"""The instructor's checks, one list of cases per graded assignment (paper §3.1-3.3, §4.2).

A case is one call of a graded function on an input the parent builds (named here in
words), and a judgement of the student's answer against the reference's answer to the same
call (course/judge.py). The inputs go to the sandboxed child; the reference's answers never
leave the parent. An assignment scores its points when every case passes.

Each assignment runs in a child of its own, so a crash, hang or tampering in one costs that
assignment only; decode and the round trip call the student's own peak extraction and
select_component, as the pipeline does.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from course.judge import all_of, bounded, finite, raises, same, same_grads


@dataclass(frozen=True)
class Case:
    words: str    # the input in words, for the feedback
    call: dict    # what the child runs (course/child.py's call format)
    judge: object  # judge(student's answer, reference's answer) -> None or why it is wrong


@dataclass(frozen=True)
class Assignment:
    name: str         # the row of the grading table
    module: str       # the student's module the child imports
    functions: tuple  # the functions whose solution regions it grades
    points: int       # all or nothing: every case must pass
    cases: object = field(repr=False)  # () -> [Case]


def call(function, *args, grad=None, autocast=False, return_args=(), **kwargs):
    """A call in the child's format; numpy arrays are wrapped for transport."""
    from course.child import encode_value
    return dict(function=function, args=encode_value(list(args)), kwargs=encode_value(kwargs),
                autocast=autocast, grad=grad, return_args=list(return_args))


def weights(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


# ----------------------------------------------------------------------------- sigma_activation
def sigma_cases():
    x = torch.tensor([0.0, 3.0, 0.5, 50.0, -0.25, -1.0, -6.0], dtype=torch.float64)
    cases = [Case(f"x = {x.tolist()} (float64), floor = {f}", call("sigma_activation", x, f), same())
             for f in (0.0, 1.0, 9.0)]
    for f in (1.0, 9.0):
        cases += [Case(f"x = 1001 points from -8 to 1000 (float32), floor = {f}: sigma > floor",
                       call("sigma_activation", torch.linspace(-8, 1e3, 1001), f), all_of(same(), bounded(f, True))),
                  Case(f"x = [-1e3, -1e4] (float32: ELU(x) + 1 is exactly 0), floor = {f}: sigma >= floor",
                       call("sigma_activation", torch.tensor([-1e3, -1e4]), f), all_of(same(), bounded(f)))]
    cases.append(Case("floor = -1: a ValueError", call("sigma_activation", torch.zeros(1), -1.0), raises("ValueError")))
    raw = torch.tensor([-1e4, -1e3, -200.0, -20.0])
    for ac in (False, True):
        cases.append(Case(f"floor = 0, x = {raw.tolist()}{' under bf16 autocast' if ac else ''}: the clamp at 1e-4, "
                          "finite gradients", call("sigma_activation", raw, 0.0, autocast=ac,
                                                   grad=dict(wrt=[0], weights=torch.ones(4))),
                          all_of(bounded(torch.tensor(1e-4).item()), same(rtol=1e-2, dtype=False), finite(grads=True))))
    return cases


# ----------------------------------------------------------------------------- mdn_nll
def random_mixture(N=6, M=3, K=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 2 * K
    target = torch.randn(N, D, generator=g, dtype=dtype) * 5
    mu = target[:, None, :] + torch.randn(N, M, D, generator=g, dtype=dtype) * 3
    sigma = torch.rand(N, M, 2, generator=g, dtype=dtype) * 2 + 0.3
    log_alpha = F.log_softmax(torch.randn(N, M, generator=g, dtype=dtype), dim=1)
    mask = (torch.rand(N, K, generator=g) > 0.3).to(dtype).repeat_interleave(2, dim=1)
    mask[0] = 0  # an instance with no visible joint
    kpt_scale = torch.rand(K, generator=g, dtype=dtype) + 0.2
    return target, mu, sigma, log_alpha, mask, kpt_scale


def nll_cases():
    t, mu, sigma, la, mask, k = random_mixture()
    cases = [
        Case("per_dim_std: sigma (2, 3, 2), D = 8, kpt_scale of 4 joints",
             call("per_dim_std", sigma[:2], 8, k), same()),
        Case("per_dim_std: sigma (6, 3, 2), D = 2, no kpt_scale (a box)", call("per_dim_std", sigma, 2), same()),
        Case("per_dim_std: kpt_scale of 3 entries for D = 8: a ValueError",
             call("per_dim_std", sigma, 8, torch.ones(3)), raises("ValueError")),
        Case("6 pose instances (K = 4 joints, M = 3, float64) with a visibility mask (instance 0 has none) "
             "and kpt_scale", call("mdn_nll", t, mu, sigma, la, mask, k), same(rtol=1e-9, atol=1e-9)),
    ]
    far = 1e3 * (1 - mask)
    cases.append(Case("the same instances with every masked dim moved 1000 px away (mask = 0 dims must not count)",
                      call("mdn_nll", t + far, mu - far[:, None, :], sigma, la, mask, k), same(rtol=1e-9, atol=1e-9)))
    tb, mub, sb, lab, _, _ = random_mixture(K=1, seed=1)
    cases.append(Case("6 boxes (D = 2, M = 3), no mask, no kpt_scale", call("mdn_nll", tb, mub, sb, lab),
                      same(rtol=1e-9, atol=1e-9)))
    c = torch.tensor([2.0, 6.0, 8.0], dtype=torch.float64)
    cmask = (torch.arange(8)[None, :] < c[:, None]).to(torch.float64)
    z = lambda *s: torch.zeros(*s, dtype=torch.float64)
    cases.append(Case("one component at the target with std 1 and 2, 6, 8 of 8 dims visible (c of Eq. 2)",
                      call("mdn_nll", z(3, 8), z(3, 1, 8), torch.ones(3, 1, 2, dtype=torch.float64), z(3, 1), cmask,
                           torch.ones(4, dtype=torch.float64)), same(rtol=1e-9, atol=1e-9)))
    ks = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    std = torch.tensor([[0.75, 1.5, 3.0, 6.0, 6.0, 12.0]], dtype=torch.float64)
    cases.append(Case("a target one std (sigma_axis * k_j) from mu on each of 6 dims, kpt_scale [0.5, 2, 4]",
                      call("mdn_nll", std, z(1, 1, 6), torch.tensor([[[1.5, 3.0]]], dtype=torch.float64), z(1, 1),
                           kpt_scale=ks), same(rtol=1e-9, atol=1e-9)))
    t1, mu1, s1, la1, _, k1 = random_mixture(N=1, M=1, K=3, seed=2)
    for scale, words in ((k1, "kpt_scale k"), (k1 / 2, "kpt_scale k / 2 (the -sum log k_j term)")):
        cases.append(Case(f"one Gaussian at its mean, 3 joints, {words}",
                          call("mdn_nll", t1, t1[:, None, :].clone(), s1, z(1, 1), kpt_scale=scale),
                          same(rtol=1e-9, atol=1e-9)))
    t4, mu4, s4, _, _, _ = random_mixture(N=4, M=1, K=1, seed=3)
    la3 = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)).repeat(4, 1)
    cases.append(Case("three identical components with alphas 0.7, 0.2, 0.1 (log-sum-exp, not a mean)",
                      call("mdn_nll", t4, mu4.repeat(1, 3, 1), s4.repeat(1, 3, 1), la3), same(rtol=1e-9, atol=1e-9)))
    tg, mug, sg, lag, maskg, kg = random_mixture(N=3, M=2, K=2, seed=4)
    cases.append(Case("gradients of 3 pose instances (K = 2, M = 2) for mu, sigma and log_alpha",
                      call("mdn_nll", tg, mug, sg, lag, maskg, kg, grad=dict(wrt=[1, 2, 3], weights=weights(3, 5))),
                      all_of(same(rtol=1e-9, atol=1e-9), same_grads(rtol=1e-6, atol=1e-9))))
    N, M, K = 5, 3, 17
    ex_la = F.log_softmax(torch.tensor([1e4, -1e4, 0.0]).repeat(N, 1), dim=1)
    ex_mask = torch.ones(N, 2 * K)
    ex_mask[1] = 0
    from annotations import COCO_PERSON_SIGMAS
    for ac in (False, True):
        cases.append(Case(f"residuals of 1e4 px at sigma 1e-4, alphas 1 and 0, an all-masked instance, "
                          f"COCO kpt_scale (float32{', bf16 autocast' if ac else ''}): float32, finite value and gradients",
                          call("mdn_nll", torch.full((N, 2 * K), 1e4), torch.zeros(N, M, 2 * K),
                               torch.tensor([1e-4, 1e3]).repeat(N, M, 1), ex_la, ex_mask,
                               torch.tensor(COCO_PERSON_SIGMAS),
                               autocast=ac, grad=dict(wrt=[1, 2, 3], weights=torch.ones(N))),
                          all_of(same(rtol=1e-4), finite(grads=True))))
    cases.append(Case("kpt_scale of 3 entries for K = 4 joints: a ValueError",
                      call("mdn_nll", t, mu, sigma, la, mask, torch.ones(3)), raises("ValueError")))
    return cases


# ----------------------------------------------------------------------------- draw_gaussian
def gaussian_cases():
    import coco_data
    cases = [Case(f"_gaussian_kernel({r})", call("_gaussian_kernel", r), same(rtol=1e-12, atol=1e-15))
             for r in (0, 1, 3, 7)]
    hm = np.zeros((9, 12), np.float32)
    cases.append(Case("draw_gaussian on a zero 9x12 map at (5, 4), radius 3",
                      call("draw_gaussian", hm.copy(), (5, 4), 3, return_args=[0]), same(args=True)))
    coco_data.draw_gaussian(hm, (5, 4), 3)
    cases.append(Case("draw_gaussian at the corner (0, 8), radius 3, onto the previous splat (clipped, max not sum)",
                      call("draw_gaussian", hm.copy(), (0, 8), 3, return_args=[0]), same(args=True)))
    rng = np.random.default_rng(0)
    for i, (x, y, r) in enumerate([(0, 0, 0), (16, 19, 2), (8, 10, 5), (3, 17, 9), (16, 0, 1)]):
        prior = (rng.random((20, 17)) * 0.6).astype(np.float32)
        cases.append(Case(f"draw_gaussian on a 20x17 map of random values below 0.6 at ({x}, {y}), radius {r}",
                          call("draw_gaussian", prior, (x, y), r, return_args=[0]), same(args=True)))
    boxes = np.array([[2.2, 3.0, 10.6, 7.0], [5.0, 5.0, 5.0, 9.0], [-4.0, 12.0, 6.0, 20.0], [1.0, 1.0, 3.0, 3.0]])
    cases.append(Case("render_targets: 4 boxes on a 16x16 map (one degenerate, one clipped, one over max_objs = 2)",
                      call("render_targets", boxes, [0, 1, 1, 0], 2, 16, 2), same()))
    kps = np.zeros((2, 3, 3))
    kps[0] = [[4.5, 2.25, 2], [33.0, 5.0, 2], [6.0, 6.0, 0]]
    cases.append(Case("render_targets: 2 persons with 3 joints (visible, outside the map, unlabelled) on a 32x32 map",
                      call("render_targets", np.array([[2.0, 2, 10, 12], [20, 20, 28, 30]]), [0, 0], 1, 32, 4, kps),
                      same()))
    return cases


# ----------------------------------------------------------------------------- peaks, select, decode
def peak_cases():
    import decode
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 13, generator=g)
    x[0, 0, 3, 3] = x[0, 0, 3, 4]  # a plateau
    heat = torch.zeros(1, 2, 5, 6)
    heat[0, 0, 1, 1], heat[0, 0, 1, 2], heat[0, 1, 3, 4] = 0.9, 0.5, 0.7
    rand_heat = torch.sigmoid(torch.randn(2, 3, 8, 10, generator=g) * 3)
    return [
        Case("max_filter3x3 of random maps (2, 5, 9, 13) with a plateau", call("max_filter3x3", x), same(rtol=0, atol=0)),
        Case("max_filter3x3 of a (1, 2, 1, 3) map", call("max_filter3x3", x[:1, :2, :1, :3]), same(rtol=0, atol=0)),
        Case("peak_mask: peaks 0.9 and 0.7, a 0.5 next to the 0.9", call("peak_mask", heat), same(rtol=0, atol=0)),
        Case("peak_mask of random heatmaps (2, 3, 8, 10)", call("peak_mask", rand_heat), same(rtol=0, atol=0)),
        Case("topk_peaks(k = 7) of the peaks of random heatmaps (2, 3, 8, 10)",
             call("topk_peaks", decode.peak_mask(rand_heat), 7), same(rtol=0, atol=0)),
        Case("topk_peaks(k = 100) of a (1, 2, 3, 3) map (fewer cells than k)",
             call("topk_peaks", rand_heat[:1, :2, :3, :3], 100), same(rtol=0, atol=0)),
    ]


def select_cases():
    mu = torch.tensor([[[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]]])
    sigma = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    la = torch.tensor([[0.2, 0.5, 0.3]]).log()
    g = torch.Generator().manual_seed(0)
    rmu, rsigma = torch.randn(2, 5, 3, 4, generator=g), torch.rand(2, 5, 3, 2, generator=g) + 0.1
    rla = F.log_softmax(torch.randn(2, 5, 3, generator=g), -1)
    cases = [Case(f"one mixture, alphas 0.2, 0.5, 0.3, how = {h!r}", call("select_component", mu, sigma, la, h), same())
             for h in ("max", "mean", 2)]
    cases += [Case(f"random mixtures (2, 5) x M = 3 x D = 4, how = {h!r}", call("select_component", rmu, rsigma, rla, h),
                   same()) for h in ("max", "mean", 1)]
    comp = torch.randint(0, 3, (2, 5), generator=g)
    cases.append(Case("random mixtures (2, 5) x M = 3 x D = 4, a component per location",
                      call("select_component", rmu, rsigma, rla, comp), same()))
    return cases


def planted_maps(task="det", M=3, K=2, H=16, W=20, C=2):
    """Two planted objects (tests/test_decode.py's maps): A of class C-1 at (5, 4), B of class 0 at (12, 10)."""
    D = 2 if task == "det" else 2 * K
    heads = {"hm": C, "reg": 2, "wh": 2 * M} if task == "det" else {"hm": C, "reg": 2, "wh": 2, "hps": D * M}
    heads.update(mdn_sigma=2 * M, mdn_logits=M)
    out = {name: torch.zeros(1, ch, H, W) for name, ch in heads.items()}
    out["hm"][:] = -10
    out["hm"][0, C - 1, 4, 5], out["hm"][0, 0, 10, 12] = 3.0, 2.0
    out["reg"][0, :, 4, 5] = torch.tensor([0.25, 0.5])
    mu = out["wh" if task == "det" else "hps"].view(1, M, D, H, W)
    mu[0, :, :, 4, 5] = torch.arange(M * D, dtype=torch.float32).view(M, D) + 1
    mu[0, :, :, 10, 12] = 7.0
    out["mdn_logits"][0, :, 4, 5] = torch.tensor([0.0, 2.0, 1.0])[:M]
    out["mdn_logits"][0, :, 10, 12] = torch.tensor([5.0, 0.0, 0.0])[:M]
    out["mdn_sigma"][:] = 1.0
    out["mdn_sigma"][0, :, 4, 5] = 2.0
    if task == "pose":
        out["wh"][0, :, 4, 5] = torch.tensor([4.0, 6.0])
    return out


def decode_cases():
    det = planted_maps("det")
    cases = [Case(f"two planted objects (det, M = 3), k = 2, component = {c!r}", call("decode", det, k=2, component=c),
                  same(rtol=1e-5, atol=1e-5)) for c in ("max", 2, "mean")]
    cases += [Case("two planted objects (det), k = 2, mixture = True", call("decode", det, k=2, mixture=True),
                   same(rtol=1e-5, atol=1e-5)),
              Case("two planted persons (pose, K = 2 joints, M = 3), k = 2", call("decode", planted_maps("pose", C=1), k=2),
                   same(rtol=1e-5, atol=1e-5)),
              Case("the single-mode base (M = 0: hm, reg, wh only), k = 2",
                   call("decode", {"hm": det["hm"], "reg": det["reg"], "wh": det["wh"][:, :2]}, k=2),
                   same(rtol=1e-5, atol=1e-5))]
    g = torch.Generator().manual_seed(0)
    rand = {"hm": torch.randn(2, 3, 8, 10, generator=g) * 3, "reg": torch.rand(2, 2, 8, 10, generator=g),
            "wh": torch.rand(2, 6, 8, 10, generator=g) * 9, "mdn_sigma": torch.rand(2, 6, 8, 10, generator=g) + 1,
            "mdn_logits": torch.randn(2, 3, 8, 10, generator=g)}
    cases.append(Case("random outputs (B = 2, 3 classes, M = 3, 8x10 map), k = 10",
                      call("decode", rand, k=10), same(rtol=1e-5, atol=1e-5)))
    return cases


# ----------------------------------------------------------------------------- the round trip
def recovers(boxes, classes, keypoints=None):
    """The decoded detections scoring > 0.5 are the ground truth: same count, and each object's
    class, box and visible joints found among them (within 1e-3 output pixels)."""
    def judge(got, want):
        if got["error"] is not None:
            return f"raised {got['error']['types'][0]}: {got['error']['message']}"
        d = got["value"]
        if type(d) is not dict or not {"scores", "classes", "boxes"} <= set(d) or (
                keypoints is not None and "keypoints" not in d):
            return "expected decode's dict with scores, classes, boxes" + (", keypoints" if keypoints is not None else "")
        keep = d["scores"][0] > 0.5
        if int(keep.sum()) != len(boxes):
            return f"expected {len(boxes)} detections scoring > 0.5, got {int(keep.sum())}"
        for i, box in enumerate(boxes):
            hit = (d["classes"][0][keep] == classes[i]) & (
                (d["boxes"][0][keep].double() - torch.tensor(box)).abs().max(-1).values < 1e-3)
            if keypoints is not None and hit.any():
                vis = torch.tensor(keypoints[i][:, 2] > 0)
                err = (d["keypoints"][0][keep][:, vis].double() - torch.tensor(keypoints[i][vis.numpy(), :2]))
                hit &= err.abs().amax((-2, -1)) < 1e-3 if vis.any() else hit
            if not hit.any():
                return f"object {i} (class {classes[i]}, box {list(box)}) was not recovered"
        return None
    return judge


def round_trip_cases():
    boxes = [[3.5, 4.25, 20.0, 12.0], [30.0, 30.0, 50.5, 61.0], [40.2, 5.1, 60.8, 22.4], [8.0, 40.0, 14.0, 60.0]]
    classes = [0, 1, 1, 0]
    people = [[10.0, 10.0, 30.0, 50.0], [36.0, 8.0, 60.0, 56.0]]
    kps = np.array([[[20.5, 14.25, 2], [15.0, 30.0, 1], [0, 0, 0]],
                    [[48.0, 12.5, 2], [0, 0, 0], [44.75, 50.0, 2]]])
    return [Case("4 boxes of 2 classes on a 64x64 map through render_targets, perfect outputs and decode",
                 call("round_trip", np.array(boxes), classes, 2, 64, 8), recovers(boxes, classes)),
            Case("2 persons with 3 joints (one unlabelled each) on a 64x64 map, the same way",
                 call("round_trip", np.array(people), [0, 0], 1, 64, 4, kps), recovers(people, [0, 0], kps))]


ASSIGNMENTS = [  # in the suggested order: toy MDN -> dense loss -> targets -> decoding
    Assignment("sigma_activation", "mdn_dense", ("sigma_activation",), 5, sigma_cases),
    Assignment("mdn_nll", "mdn_dense", ("per_dim_std", "mdn_nll"), 30, nll_cases),
    Assignment("draw_gaussian", "coco_data", ("_gaussian_kernel", "draw_gaussian"), 15, gaussian_cases),
    Assignment("peak extraction", "decode", ("max_filter3x3", "peak_mask", "topk_peaks"), 15, peak_cases),
    Assignment("select_component", "mdn_dense", ("select_component",), 10, select_cases),
    Assignment("decode", "decode", ("decode",), 15, decode_cases),
    Assignment("round trip (all of the above)", "coco_data", (), 10, round_trip_cases),
]
assert sum(a.points for a in ASSIGNMENTS) == 100
