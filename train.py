"""Train CenterNet (--m 0) or MDN_M (--m M) for detection or pose: the paper's §4.1.

    python train.py --task pose --m 3                 # synthetic data, small net, CPU minutes
    python train.py --task det --m 3 --data COCO_ROOT --arch hourglass104 --schedule 1x
    torchrun --nproc_per_node=8 train.py --task pose --mdn 3 --data COCO_ROOT --arch hourglass104

(--mdn is --m under another name: torchrun would read --m as one of its own flags.)

A plain loop: Adam, step decay, the total loss of Eq. (6) (mdn_dense.total_loss) summed
over hourglass stacks, one JSON line per epoch, an atomic checkpoint per epoch, COCO AP
at the end (evaluate.py) for the full model and for each component.
"""
import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import mdn_dense as md
from coco_data import CocoDataset, coco2017_paths

# Paper §4.1 / official schedules. lr is for the reference batch; --lr overrides.
PRESETS = {
    "hourglass104": dict(input_size=512, batch_size=12, lr=2.5e-4),
    "dla34": dict(input_size=512, batch_size=32, lr=2e-4, epochs=140, lr_steps=[90, 120]),
    # CPU demos on the synthetic data: lr 2.5e-3 reached AP 0.09 after 5 epochs where 1e-3
    # reached 0.01 (small_dla, pose, M = 3); 20 epochs of 2000 images take ~5.5 minutes on 2 cores.
    "small_hourglass": dict(input_size=128, batch_size=32, lr=2.5e-3),
    "small_dla": dict(input_size=128, batch_size=32, lr=2.5e-3),
}
HOURGLASS_SCHEDULES = {"1x": 50, "2x": 100, "3x": 150}  # lr drop 10 epochs before the end
SYNTHETIC_EPOCHS = {"pose": 20, "det": 20}                 # fits the 10-minute CPU budget


@dataclass
class Config:
    """Everything a run needs; stored as a plain dict in every checkpoint."""
    task: str = "pose"
    m: int = 3
    arch: str = "small_dla"
    ann: str = ""
    images: str = ""
    val_ann: str = ""
    val_images: str = ""
    input_size: int = 128
    batch_size: int = 32
    lr: float = 2.5e-3
    epochs: int = 20
    lr_steps: list = field(default_factory=list)
    sigma_floor: float = 1.0
    loss_weights: dict = field(default_factory=dict)
    num_classes: int = 1
    num_joints: int = 0
    workers: int = 0
    seed: int = 0
    out: str = "runs/pose_m3"
    eval_every: int = 0
    compile: bool = False
    max_images: int = 0
    init: str = ""
    mdn_head: str = "separate"
    flip_prob: float = 0.5


# ----------------------------------------------------------------------------- pieces
def config_of(stored):
    """A checkpoint's config dict -> Config. A field added to Config after the checkpoint was
    written takes its default, which is always the behaviour from before the field existed
    (flip_prob 0.5, mdn_head "separate", ...); a field this code does not know is an error."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"checkpoint config has fields this train.py does not know: {', '.join(unknown)} "
                         f"(written by a newer version?)")
    return Config(**stored)


def build_model(arch, heads):
    """Architecture name -> network whose forward returns a list of head dicts."""
    from dla import dla34, dla_small
    from hourglass import hourglass104, hourglass_small
    builders = {"hourglass104": hourglass104, "dla34": dla34,
                "small_hourglass": hourglass_small, "small_dla": dla_small}
    if arch not in builders:
        raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(builders)}")
    return builders[arch](heads)


def lr_at(epoch, cfg):
    """Step decay: x0.1 at every epoch in lr_steps (paper §4.1)."""
    return cfg.lr * 0.1 ** sum(epoch >= s for s in cfg.lr_steps)


def save_checkpoint(path, model, optimizer, epoch, cfg, history):
    """Atomic: a crash while writing leaves the previous checkpoint intact."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "config": dataclasses.asdict(cfg), "history": history}, tmp)
    os.replace(tmp, path)


def init_from(model, path):
    """Start from another run's weights (CenterNet's --load_model): every tensor whose name
    and shape match is copied; the others (e.g. the mixture heads when the run was the
    base) keep their fresh initialisation. Returns (copied, skipped) names; raises if
    nothing matches."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    source = state.get("model", state)
    own = model.state_dict()
    copied = [k for k, v in source.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise SystemExit(f"--init {path}: no tensor matches this model (another architecture?)")
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return copied, [k for k in own if k not in copied]


def setup_distributed():
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain python runs one process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def datasets(cfg):
    train = CocoDataset(cfg.ann, cfg.images, cfg.task, train=True, input_size=cfg.input_size,
                        flip_prob=cfg.flip_prob)
    val = CocoDataset(cfg.val_ann, cfg.val_images, cfg.task, train=False, input_size=cfg.input_size)
    if cfg.max_images:
        train.image_ids = train.image_ids[:cfg.max_images]
        val.image_ids = val.image_ids[:cfg.max_images]
    return train, val


def plot_history(history, path, title=""):
    """Loss parts and AP per epoch (the paper's Fig. 4 is drawn from such logs). Draws on
    a bare Figure, so it neither needs pyplot nor changes a notebook's backend."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [h["epoch"] + 1 for h in history]
    for key in [k for k in history[-1] if k not in ("epoch", "lr", "time", "AP", "AP_refined", "AP_components")]:
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


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(model, val, cfg, rank, world, device, progress):
    """COCO AP of the full model and of each component; every rank infers a shard, rank 0
    evaluates the gathered results (de-duplicated by image id: the sampler pads).

    Pose adds the row "All+ref": the max component with CenterNet's hm_hp refinement (the
    default of CenterNet's pose test, the "refined" rows of Table 7); "All" is unrefined."""
    from evaluate import component_rules, evaluate_rows, predict
    rows = component_rules(cfg.m)
    sampler = torch.utils.data.DistributedSampler(val, world, rank, shuffle=False)
    loader = torch.utils.data.DataLoader(val, batch_size=16, sampler=sampler, num_workers=cfg.workers)
    net = model.module if hasattr(model, "module") else model
    if cfg.task == "pose":
        rows = {"All": rows.pop("All"), "All+ref": ("max", True), **rows}
    results = predict(net, loader, cfg.task, cfg.m, cfg.sigma_floor, val.cat_ids, device,
                      components=tuple(rows.values()), flip_idx=getattr(val, "flip_idx", None),
                      progress=progress)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = {rule: [r for part in gathered for r in part[rule]] for rule in results}
    if rank != 0:
        return None
    for rule, res in results.items():  # padded duplicates carry identical detections
        seen, unique = set(), []
        for r in res:
            key = (r["image_id"], r["score"], tuple(r["bbox"]))
            if key not in seen:
                seen.add(key)
                unique.append(r)
        results[rule] = unique
    return evaluate_rows(val.coco, results, rows, cfg.task, val.image_ids)


# ----------------------------------------------------------------------------- training
def train(cfg, resume=False):
    rank, world, device = setup_distributed()
    out = Path(cfg.out)
    ckpt_path = out / "ckpt.pt"
    if rank == 0:
        if ckpt_path.exists() and not resume:
            raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it or --out to start elsewhere")
        out.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % world:
        raise SystemExit(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple "
                         f"of the {world} processes")
    torch.manual_seed(cfg.seed)
    train_set, val_set = datasets(cfg)
    cfg.num_classes, cfg.num_joints = train_set.num_classes, train_set.num_joints
    heads = md.head_channels(cfg.task, cfg.m, cfg.num_classes, cfg.num_joints or 17, mdn_head=cfg.mdn_head)
    model = build_model(cfg.arch, heads).to(device)
    if cfg.init and not resume:
        copied, skipped = init_from(model, cfg.init)
        if rank == 0:
            fresh = sorted({k.rsplit(".", 1)[0] for k in skipped})   # layers, e.g. heads.mdn_sigma.0
            print(f"--init {cfg.init}: copied {len(copied)} tensors; fresh: {', '.join(fresh) or 'none'}")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_epoch, history = 0, []
    if resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model, [device] if cuda else None) if world > 1 else model
    step_fn = torch.compile(net) if cfg.compile else net
    sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                                         num_workers=cfg.workers, pin_memory=cuda, drop_last=True,
                                         persistent_workers=cfg.workers > 0)
    kpt_scale = md.COCO_KPT_SCALE if cfg.num_joints == 17 else None
    weights = md.LossWeights(**cfg.loss_weights)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    for epoch in range(start_epoch, cfg.epochs):
        # Seeding per epoch makes a resumed run see the same batches and augmentations as
        # an uninterrupted one (the sampler's order comes from seed + epoch too).
        torch.manual_seed(cfg.seed + 1000 * epoch + rank)
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch, cfg)  # --batch-size is global: same batch, same lr
        net.train()
        sums, n, t0 = {}, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False)
        for step, batch in enumerate(bar):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            x = batch["input"].to(memory_format=torch.channels_last) if cuda else batch["input"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                outputs = step_fn(x)
            loss, parts = md.total_loss(outputs, batch, cfg.task, cfg.m, cfg.sigma_floor, weights, kpt_scale)
            if not torch.isfinite(loss):
                last = f"{ckpt_path} (after epoch {history[-1]['epoch'] + 1})" if history else "none yet"
                raise SystemExit(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step} "
                                 f"({parts}); last good checkpoint: {last}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            parts["total"] = loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{sums['total'] / n:.3f}")
        line = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "time": time.perf_counter() - t0,
                **{k: v / max(n, 1) for k, v in sums.items()}}
        last_epoch = epoch == cfg.epochs - 1
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or last_epoch:
            stats = evaluate_model(net, val_set, cfg, rank, world, device, progress=rank == 0)
            if rank == 0:
                line["AP"] = float(stats["All"][0])
                if "All+ref" in stats:
                    line["AP_refined"] = float(stats["All+ref"][0])
                line["AP_components"] = {k: float(v[0]) for k, v in stats.items() if not k.startswith("All")}
        if rank == 0:
            history.append(line)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            save_checkpoint(ckpt_path, model, optimizer, epoch, cfg, history)
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {line.get('total', float('nan')):.4f}  "
                  f"lr {line['lr']:.2e}  {line['time']:.0f}s" + (f"  AP {line['AP']:.3f}" if "AP" in line else ""))
    if rank == 0:
        plot_history(history, out / "curves.png", title=f"{cfg.task} M={cfg.m} {cfg.arch}")
    if world > 1:
        dist.destroy_process_group()
    return (stats if rank == 0 and cfg.epochs > start_epoch else None), history


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["det", "pose"], default="pose", help="det (boxes, all categories) or pose (person keypoints); default pose")
    p.add_argument("--m", "--mdn", dest="m", type=int, default=3,
                   help="mixture components: 0 = single-mode CenterNet base (L1), M >= 1 = MDN_M (default 3). "
                        "Under torchrun write --mdn: torchrun's own parser takes --m for a prefix of its flags")
    d = p.add_argument_group("data (default: the synthetic COCO-format demo set, generated on first use)")
    d.add_argument("--data", help="COCO 2017 root: annotations/, train2017/, val2017/")
    d.add_argument("--ann", help="training annotation JSON of any COCO-format set (with --images)")
    d.add_argument("--images", help="image folder of --ann")
    d.add_argument("--val-ann", help="validation annotation JSON (default: --ann)")
    d.add_argument("--val-images", help="image folder of --val-ann (default: --images)")
    d.add_argument("--max-images", type=int, default=0, help="use only the first N images of each split (quick checks)")
    a = p.add_argument_group("model and schedule (defaults: small_dla at 128 px, batch 32, Adam 2.5e-3, 20 epochs (lr x0.1 at 15) on synthetic data; the paper's preset on real data)")
    a.add_argument("--arch", choices=list(PRESETS), help="network: hourglass104 / dla34 (paper) or small_hourglass / small_dla (CPU demos). Default: small_dla without --data/--ann, hourglass104 with")
    a.add_argument("--schedule", choices=list(HOURGLASS_SCHEDULES), default="1x", help="hourglass104: 1x / 2x / 3x = 50 / 100 / 150 epochs, lr x0.1 ten epochs before the end (default 1x)")
    a.add_argument("--epochs", type=int, help="epochs (default: from the preset / schedule)")
    a.add_argument("--lr-steps", type=int, nargs="*", help="epochs at which lr drops x0.1 (default: from the preset)")
    a.add_argument("--lr", type=float, help="Adam learning rate for the whole batch (default: the preset's)")
    a.add_argument("--batch-size", type=int, help="global batch size, split over torchrun processes; the lr is for this batch (default: the preset's: 12 hourglass104, 32 dla34)")
    a.add_argument("--input-size", type=int, help="training input side in pixels (default: 512 real data, 128 synthetic)")
    a.add_argument("--mdn-head", choices=["separate", "shared"], default="separate",
                   help="separate (default, the paper's): mu, sigma and the mixture logits each get a head "
                        "(3x3 conv + 1x1), as in the official code; shared (not the paper's): one head's "
                        "3x3 hidden layer feeds all three, so MDN adds only output channels")
    a.add_argument("--flip-prob", type=float,
                   help="probability of the horizontal-flip augmentation. Default 0.5 (CenterNet's), but 0 "
                        "on the synthetic demo pose set: its figures colour-code the sides (left limbs warm), "
                        "so a mirrored figure is one the generator never draws, with the sides' colours "
                        "contradicting their labels. Pass 0 for other figure sets given with --ann")
    l = p.add_argument_group("loss (defaults: the paper's / official values)")
    l.add_argument("--sigma-floor", type=float, help="sigma > floor (§4.2); default 1 for det, 9 for pose (official mdn_min_sigma = floor + 1)")
    for name, default in [("hm", 1.0), ("reg", 1.0), ("wh", 0.1), ("hm-hp", 1.0), ("hp-offset", 1.0)]:
        l.add_argument(f"--w-{name}", type=float, help=f"weight of the {name} loss in Eq. (6) (default {default})")
    l.add_argument("--w-hps", type=float, help="weight of the pose regression loss (default 0.1 for MDN, 1 for the L1 base)")
    r = p.add_argument_group("run")
    r.add_argument("--out", help="output folder (default runs/<task>_m<M>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument("--init", help="start from the weights of another run's ckpt.pt (fine-tuning; tensors whose "
                                  "name or shape differ, e.g. mixture heads after a --m 0 run, start fresh)")
    r.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs (default: only at the end)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    r.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core). On a CPU "
                                               "shared with other busy processes use 1: OpenMP threads waiting on each "
                                               "other then slowed training here 10-40x")
    return p.parse_args(argv)


def config_from_args(args):
    """Resolve the defaults that depend on the data: synthetic -> CPU demo preset,
    real data -> the paper's preset."""
    real = bool(args.data or args.ann)
    if args.data:
        ann, images = coco2017_paths(args.data, args.task, "train")
        val_ann, val_images = coco2017_paths(args.data, args.task, "val")
    elif args.ann:
        if not args.images:
            raise SystemExit("--ann needs --images")
        ann, images = args.ann, args.images
        val_ann, val_images = args.val_ann or ann, args.val_images or images
    else:
        from synthetic_coco import ensure_demo_dataset
        splits = ensure_demo_dataset(args.task)
        (ann, images), (val_ann, val_images) = splits["train"], splits["val"]
    arch = args.arch or ("hourglass104" if real else "small_dla")
    preset = dict(PRESETS[arch])
    if arch == "hourglass104":
        epochs = HOURGLASS_SCHEDULES[args.schedule]
        preset.update(epochs=epochs, lr_steps=[epochs - 10])
    preset.setdefault("epochs", SYNTHETIC_EPOCHS[args.task])
    preset.setdefault("lr_steps", [math.ceil(preset["epochs"] * 0.75)])
    # A flip must give an image the data could contain. Real people and the synthetic shapes
    # are mirror-symmetric; the synthetic figures are not (warm colours mark the left side).
    flip_prob = args.flip_prob if args.flip_prob is not None else 0.0 if not real and args.task == "pose" else 0.5
    if not 0 <= flip_prob <= 1:
        raise SystemExit(f"--flip-prob {flip_prob}: must be between 0 and 1")
    weights = {k: getattr(args, "w_" + k) for k in ("hm", "reg", "wh", "hps", "hm_hp", "hp_offset")
               if getattr(args, "w_" + k) is not None}
    return Config(task=args.task, m=args.m, arch=arch, ann=str(ann), images=str(images),
                  val_ann=str(val_ann), val_images=str(val_images),
                  input_size=args.input_size or preset["input_size"],
                  batch_size=args.batch_size or preset["batch_size"], lr=args.lr or preset["lr"],
                  epochs=args.epochs or preset["epochs"],
                  lr_steps=args.lr_steps if args.lr_steps is not None else preset["lr_steps"],
                  sigma_floor=args.sigma_floor if args.sigma_floor is not None else md.default_sigma_floor(args.task),
                  loss_weights=weights, workers=args.workers, seed=args.seed,
                  out=args.out or f"runs/{args.task}_m{args.m}", eval_every=args.eval_every,
                  compile=args.compile, max_images=args.max_images, init=args.init or "",
                  mdn_head=args.mdn_head, flip_prob=flip_prob)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    stats, _ = train(cfg, resume=args.resume)
    if stats is not None:
        from evaluate import format_table
        print(format_table(stats, cfg.task, f"{cfg.task}, M = {cfg.m}, {cfg.arch}: COCO AP on the validation split "
                                             f"({time.perf_counter() - t0:.0f} s in all)"))
    return stats


if __name__ == "__main__":
    main()
