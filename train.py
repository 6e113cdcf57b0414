"""Train CenterNet (--m 0) or MDN_M (--m M) for detection or pose: the paper's §4.1.

    python train.py --task pose --m 3                 # synthetic data, small net, CPU minutes
    python train.py --task det --m 3 --data COCO_ROOT --arch hourglass104 --schedule 1x
    torchrun --nproc_per_node=8 train.py --task pose --mdn 3 --data COCO_ROOT --arch hourglass104

(--mdn is --m under another name: torchrun would read --m as one of its own flags.)

A plain loop: Adam (the pose demo: Muon for the hidden convolutions, util/muon.py), step
decay, the total loss of Eq. (6) (mdn_dense.total_loss) averaged over hourglass stacks, one
JSON line per epoch, an atomic checkpoint per epoch, COCO AP
at the end (evaluate.py) for the full model and for each component. The network comes
from model.py; this file turns the command line into a ModelConfig and a TrainConfig.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import mdn_dense as md
import synthetic_coco
from annotations import dataset_paths
from coco_data import CocoDataset, run_split
from inference import evaluate_model, format_table
from model import ARCHS, ModelConfig, build_model, default_sigma_floor, load_backbone_weights, read_checkpoint
from transforms import BadImageError
from util import precision as px
from util.flags import non_negative, positive, probability
from util.recipes import HOURGLASS_SCHEDULES, LR_SCHEDULES, lr_at, preset as recipe, schedule
from analysis.plots import plot_history
from util.ema import WeightAverage
from util.muon import OPTIMIZERS, build_optimizer
from util.weights import is_hub_name
from util.rundir import (RunLock, check_run_folder, init_from, last_good_checkpoint, next_run_folder, resume_state,
                         run_name, save_run, stop_on_signals)

@dataclass
class TrainConfig:
    """How to train (the model's own config is model.ModelConfig); stored in every checkpoint."""
    ann: str = ""
    images: str = ""
    val_ann: str = ""
    val_images: str = ""
    test_ann: str = ""              # held out: evaluated once at the end, never for tuning
    test_images: str = ""
    input_size: int = 128
    batch_size: int = 32
    lr: float = 2.5e-3
    epochs: int = 20
    lr_steps: list = field(default_factory=list)
    lr_schedule: str = "step"       # step (the paper's) | cosine
    optimizer: str = "adam"         # adam (the paper's) | muon (util/muon.py)
    warmup: float = 0.0             # epochs of linear warm-up
    ema: float = 0.0                # decay of the weight average evaluated and saved (0: the last weights)
    loss_weights: dict = field(default_factory=dict)
    flip_prob: float = 0.5
    augment: bool = True           # False: every epoch the same letterboxed images (overfit checks)
    workers: int = 0
    seed: int = 0
    out: str = "runs/pose_m3"
    eval_every: int = 0
    compile: bool = False
    max_images: int = 0
    hold_images: bool = False       # the training images decoded once, kept in memory
    init: str = ""
    oks_sigmas: list | None = None  # per-joint OKS sigmas (pycocotools' convention) when the data has none
    precision: str = "fp32"         # fp32 | bf16: what --precision resolved to here (precision.py)


# ----------------------------------------------------------------------------- pieces
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


def test_dataset(cfg, task):
    """The held-out split (None without one): built like the validation split."""
    try:
        return run_split(cfg, task, "test")
    except (ValueError, OSError) as e:
        raise SystemExit(str(e)) from None


def datasets(cfg, task):
    # --no-augment: the training transform reduced to the letterbox evaluation uses (scale
    # max(h, w) at the image centre, no flip, no colour), so a run can fit its images exactly.
    augmentation = (dict(flip_prob=cfg.flip_prob) if cfg.augment else
                    dict(scales=(1.0,), random_center=False, flip_prob=0.0, color_aug=False))
    try:
        train = CocoDataset(cfg.ann, cfg.images, task, train=True, input_size=cfg.input_size,
                            oks_sigmas=cfg.oks_sigmas, **augmentation)
        val = run_split(cfg, task, "val")                     # cut to max_images there
    except (ValueError, OSError) as e:       # a bad annotation file: its own message names it
        raise SystemExit(str(e)) from None
    for ds in (train, val):
        if task == "pose" and ds.oks_sigmas is None:
            raise SystemExit(f"{ds.ann_file}: its {ds.num_joints} keypoints are not COCO's 17 and carry no OKS "
                             f"sigmas (they set the loss's per-joint scale k_j and COCOeval's OKS): give "
                             f"--oks-sigmas with {ds.num_joints} values or a 'sigmas' list in the category")
    if cfg.max_images:
        train.image_ids = train.image_ids[:cfg.max_images]
    if cfg.hold_images:
        train.hold_images(progress=sys.stderr.isatty())
    return train, val


# ----------------------------------------------------------------------------- training
def train(model_cfg, cfg, resume=False):
    """Train the model of model_cfg (num_classes / num_joints are read from the data) as cfg
    says. Returns (the final validation stats, the history, the test split's stats or
    None); the stats are None off rank 0."""
    rank, world, device = setup_distributed()
    out = Path(cfg.out)
    if cfg.batch_size % world:
        raise SystemExit(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple "
                         f"of the {world} processes")
    try:
        with stop_on_signals():
            if rank == 0:
                with RunLock(out):   # one run per folder; only rank 0 writes
                    return _train(model_cfg, cfg, resume, rank, world, device)
            return _train(model_cfg, cfg, resume, rank, world, device)
    except KeyboardInterrupt as e:   # SIGINT or SIGTERM; the lock is released by now
        raise SystemExit(f"{out}: stopped by {str(e) or 'SIGINT'}. Last good checkpoint: "
                         f"{last_good_checkpoint(out)}; continue with --resume") from None
    except BadImageError as e:
        raise SystemExit(f"{e.line()}. Last good checkpoint: {last_good_checkpoint(out)}; fix or remove "
                         f"the image, then run again (with --resume once a checkpoint exists)") from None


def _train(model_cfg, cfg, resume, rank, world, device):
    out = Path(cfg.out)
    ckpt_path = out / "ckpt.pt"
    if rank == 0:
        check_run_folder(out, resume)
    torch.manual_seed(cfg.seed)
    train_set, val_set = datasets(cfg, model_cfg.task)
    try:
        model_cfg = dataclasses.replace(model_cfg, num_classes=train_set.num_classes,
                                        num_joints=train_set.num_joints or model_cfg.num_joints)
    except ValueError as e:          # e.g. a file without categories: no class to detect
        raise SystemExit(f"{cfg.ann}: {e}") from None
    model = build_model(model_cfg).to(device)
    if cfg.init and not resume:
        copied, skipped = init_from(model, cfg.init)
        if rank == 0:
            fresh = sorted({k.rsplit(".", 1)[0] for k in skipped})   # layers, e.g. heads.0.mdn_sigma.0
            print(f"--init {cfg.init}: copied {len(copied)} tensors; fresh: {', '.join(fresh) or 'none'}")
    if model_cfg.backbone_weights and not resume:  # on --resume the checkpoint holds them
        try:
            path, n = load_backbone_weights(model)
        except (OSError, ValueError, RuntimeError) as e:
            raise SystemExit(f"--backbone-weights: {e}") from None
        if rank == 0:
            print(f"--backbone-weights {model_cfg.backbone_weights}: {n} ImageNet tensors into the "
                  f"{model_cfg.arch} backbone from {path}")
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr)
    start_epoch, history = 0, []
    if resume:
        state = resume_state(ckpt_path, model_cfg)
        stored = state.get("train_config", {}).get("optimizer", "adam")
        if stored != cfg.optimizer:
            raise SystemExit(f"--resume {ckpt_path}: the run trained with --optimizer {stored}, not {cfg.optimizer}")
        model.load_state_dict(state.get("train_model", state["model"]))   # with --ema, "model" is the average
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if start_epoch >= cfg.epochs and rank == 0:
            print(f"--resume: {ckpt_path} already finished its {cfg.epochs} epochs; nothing to train"
                  + ("" if "AP" in history[-1] else "; its final evaluation was interrupted: running it"))
    cuda = device.type == "cuda"
    precision = px.resolve(cfg.precision, device)
    if rank == 0:
        print(f"run {out}: {model_cfg.task} M={model_cfg.m} {model_cfg.arch} on {px.describe(device, precision)}")
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = model.to(memory_format=px.memory_format(precision))
    # --ema: the average is what is evaluated and saved as "model"; the trained weights ride along
    ema = WeightAverage(model, cfg.ema, state.get("ema") if resume else None) if cfg.ema else None
    final = ema.model if ema else model
    net = torch.nn.parallel.DistributedDataParallel(model, [device] if cuda else None) if world > 1 else model
    step_fn = torch.compile(net) if cfg.compile else net
    sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    # Workers start afresh each epoch, seeded from the per-epoch seed below: persistent
    # workers would carry their random state from epoch to epoch, so a resumed run would
    # draw other augmentations than an uninterrupted one.
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                                         num_workers=cfg.workers, pin_memory=cuda, drop_last=True)
    try:  # an epoch with no step would save an untrained model as if it were trained
        train_set.check_trainable(cfg.batch_size)
    except ValueError as e:
        raise SystemExit(f"no training step: {e}") from None
    if len(loader) == 0:
        raise SystemExit(f"no training step: {cfg.ann}: {len(train_set)} images make no batch of "
                         f"{cfg.batch_size // world} per process (--batch-size)")
    # Eq. (4)'s k_j: the dataset's OKS sigmas (COCO's for its 17 joints, as the official code)
    kpt_scale = train_set.oks_sigmas.tolist() if model_cfg.task == "pose" else None
    weights = md.LossWeights(**cfg.loss_weights)
    if rank == 0:
        (out / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model_cfg),
                                                     "train": dataclasses.asdict(cfg)}, indent=1))
    # what predict.py needs to draw and flip without the annotation file
    meta = dict(train_config=dataclasses.asdict(cfg), data=train_set.info())
    extra = lambda: dict(meta, train_model=model.state_dict(), ema=ema.state_dict()) if ema else meta
    stats = None
    last_good = f"{ckpt_path} (after epoch {history[-1]['epoch'] + 1})" if history else "none yet"

    def evaluate_and_save(epoch, line):
        stats = evaluate_model(final, val_set, cfg, rank, world, device, progress=rank == 0 and sys.stderr.isatty())
        if rank == 0:
            line["AP"] = float(stats["All"][0])
            if "All+ref" in stats:
                line["AP_refined"] = float(stats["All+ref"][0])
            line["AP_components"] = {k: float(v[0]) for k, v in stats.items() if not k.startswith("All")}
            save_run(out, final, optimizer, epoch, history, last_good, **extra())
        return stats

    for epoch in range(start_epoch, cfg.epochs):
        # Seeding per epoch makes a resumed run see the same batches and augmentations as
        # an uninterrupted one (the sampler's order comes from seed + epoch too).
        torch.manual_seed(cfg.seed + 1000 * epoch + rank)
        sampler.set_epoch(epoch)
        net.train()
        sums, n, t0 = {}, 0, time.perf_counter()
        # a redrawn bar on a terminal; in a log file, CI or a notebook one line per epoch (below)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0 or not sys.stderr.isatty(),
                   leave=False)
        for step, batch in enumerate(bar):
            for group in optimizer.param_groups:  # --batch-size is global: same batch, same lr
                group["lr"] = lr_at(epoch + step / len(loader), cfg)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            x = batch["input"].contiguous(memory_format=px.memory_format(precision))
            with px.autocast(device, precision):
                outputs = step_fn(x)
            loss, parts = md.total_loss(outputs, batch, weights, kpt_scale)
            if not torch.isfinite(loss):
                raise SystemExit(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step} "
                                 f"({parts}); nothing saved. Last good checkpoint: {last_good}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema:
                ema.update(model)
            parts["total"] = loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{sums['total'] / n:.3f}")
        line = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "time": time.perf_counter() - t0,
                **{k: v / n for k, v in sums.items()}}
        history.append(line)
        if rank == 0:  # saved before any evaluation: an evaluation error loses no training
            save_run(out, final, optimizer, epoch, history, last_good, **extra())
            last_good = f"{ckpt_path} (after epoch {epoch + 1})"
        if (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch == cfg.epochs - 1:
            stats = evaluate_and_save(epoch, line)
        if rank == 0:
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {line['total']:.4f}  "
                  f"lr {line['lr']:.2e}  {line['time']:.0f}s" + (f"  AP {line['AP']:.3f}" if "AP" in line else ""))
    if start_epoch >= cfg.epochs and "AP" not in history[-1]:   # the final evaluation was interrupted
        stats = evaluate_and_save(cfg.epochs - 1, history[-1])
    test_stats = None
    test_set = test_dataset(cfg, model_cfg.task)
    if test_set is not None and "AP_test" not in history[-1]:
        test_stats = evaluate_model(final, test_set, cfg, rank, world, device, progress=rank == 0 and sys.stderr.isatty(),
                                    components=False)
        if rank == 0:
            history[-1]["AP_test"] = float(test_stats["All"][0])
            if "All+ref" in test_stats:
                history[-1]["AP_test_refined"] = float(test_stats["All+ref"][0])
            save_run(out, final, optimizer, cfg.epochs - 1, history, last_good, **extra())
    if rank == 0 and history:
        plot_history(history, out / "curves.png", title=f"{model_cfg.task} M={model_cfg.m} {model_cfg.arch}")
    if world > 1:
        dist.destroy_process_group()
    return stats, history, test_stats


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    demo = recipe("small_dla", "pose")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["det", "pose"], default="pose", help="det (boxes, all categories) or pose (person keypoints); default pose")
    p.add_argument("--m", "--mdn", dest="m", type=non_negative(int), default=3,
                   help="mixture components: 0 = single-mode CenterNet base (L1), M >= 1 = MDN_M (default 3). "
                        "Under torchrun write --mdn: torchrun's own parser takes --m for a prefix of its flags")
    d = p.add_argument_group("data (default: the synthetic COCO-format demo set, generated on first use)")
    d.add_argument("--data", help="COCO 2017 root: annotations/, train2017/, val2017/")
    d.add_argument("--ann", help="training annotation JSON of any COCO-format set (with --images)")
    d.add_argument("--images", help="image folder of --ann")
    d.add_argument("--val-ann", help="validation annotation JSON (default: --ann; needs --ann)")
    d.add_argument("--val-images", help="image folder of --val-ann (default: --images; needs --ann)")
    d.add_argument("--test-ann", help="a held-out annotation JSON evaluated once at the end (with --test-images; "
                                      "the synthetic demo set has its own test split)")
    d.add_argument("--test-images", help="image folder of --test-ann")
    d.add_argument("--oks-sigmas", type=positive(float), nargs="+", metavar="S",
                   help="pose: one OKS sigma per joint (pycocotools' convention, COCO's nose is 0.026) for "
                        "keypoint sets other than COCO's 17 whose category has no 'sigmas' list")
    d.add_argument("--max-images", type=non_negative(int), default=0, help="use only the first N images of each split (quick checks; default 0 = all)")
    d.add_argument("--hold-images", action=argparse.BooleanOptionalAction,
                   help="decode the training images once and keep them in memory, not every epoch (default: on "
                        "for the synthetic demo set, 98 MB; off for given data: COCO train2017 would take ~100 GB)")
    a = p.add_argument_group(
        "model and schedule (defaults: the preset of --arch and --task; on the synthetic data small_dla at "
        f"{demo['input_size']} px, for pose batch {demo['batch_size']}, {'Muon + Adam' if demo['optimizer'] == 'muon' else 'Adam'} at lr {demo['lr']}, {demo['epochs']} epochs, "
        f"lr x0.1 at {demo['lr_steps']}; detection batch {recipe('small_dla', 'det')['batch_size']}; util/recipes.py)")
    a.add_argument("--arch", choices=list(ARCHS), help="network: hourglass104 / dla34 (paper) or small_hourglass / small_dla (CPU demos). Default: small_dla without --data/--ann, hourglass104 with")
    a.add_argument("--schedule", choices=list(HOURGLASS_SCHEDULES), help="hourglass104 only: 1x / 2x / 3x = 50 / 100 / 150 epochs, lr x0.1 ten epochs before the end (default 1x)")
    a.add_argument("--epochs", type=positive(int), help="epochs (default: the preset's; the preset's lr steps are scaled to it)")
    a.add_argument("--lr-steps", type=positive(int), nargs="*", help="epochs at which lr drops x0.1 (default: the preset's, scaled to --epochs; give none for a constant lr)")
    a.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="step: x0.1 at --lr-steps (the paper's); cosine: "
                                                              "a cosine decay to 0 over --epochs (default: the preset's)")
    a.add_argument("--warmup", type=non_negative(float), help="epochs of linear learning-rate warm-up from lr/100 "
                                                              "(default: the preset's; the paper uses none)")
    a.add_argument("--lr", type=positive(float), help="Adam learning rate for the whole batch (default: the preset's)")
    a.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adam (the paper's); muon (not in the paper): Muon for the hidden convolutions, Adam for the "
                        "rest, both at --lr (util/muon.py). Default: the preset's (muon for the pose demo, else adam)")
    a.add_argument("--batch-size", type=positive(int), help="global batch size, split over torchrun processes; the lr is for this batch (default: the preset's)")
    a.add_argument("--input-size", type=positive(int), help="training input side in pixels, a multiple of the network's (32; 128 for hourglass104) (default: the preset's)")
    a.add_argument("--mdn-head", choices=["separate", "shared"], default="separate",
                   help="separate (default, the paper's): mu, sigma and the mixture logits each get a head "
                        "(3x3 conv + 1x1), as in the official code; shared (not the paper's): one head's "
                        "3x3 hidden layer feeds all three, so MDN adds only output channels")
    a.add_argument("--flip-prob", type=probability,
                   help="probability of the horizontal-flip augmentation. Default 0.5 (CenterNet's), but 0 "
                        "on the synthetic demo pose set: its figures colour-code the sides (left limbs warm), "
                        "so a mirrored figure is one the generator never draws. Pass 0 for other figure sets given with --ann")
    a.add_argument("--no-augment", action="store_true",
                   help="train on the letterboxed images as evaluated (no random scale, centre, flip or colour): "
                        "the 'overfit a small set first' check, e.g. on the real sample")
    l = p.add_argument_group("loss (defaults: the paper's / official values)")
    l.add_argument("--sigma-floor", type=non_negative(float), help="sigma > floor (§4.2); default: the official value, "
                                                                   "9 for pose, 1 for det (0 for hourglass104 det); official mdn_min_sigma = floor + 1")
    for name, default in [("hm", 1.0), ("reg", 1.0), ("wh", 0.1), ("hm-hp", 1.0), ("hp-offset", 1.0)]:
        l.add_argument(f"--w-{name}", type=non_negative(float), help=f"weight of the {name} loss in Eq. (6) (default {default})")
    l.add_argument("--w-hps", type=non_negative(float), help="weight of the pose regression loss (default 0.1 for MDN, 1 for the L1 base)")
    l.add_argument("--gate-grad", type=positive(float), help="not in the paper: multiply the gradient Eq. (5) gives the "
                                                            "mixing coefficients by this (default 1 = the paper; "
                                                            "mdn_dense.LossWeights.gate_grad)")
    r = p.add_argument_group("run")
    r.add_argument("--out", help="output folder (default: a new runs/<task>_m<M>, then runs/<task>_m<M>_2, _3, ...)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest "
                                                          "runs/<task>_m<M>[_N]) from its checkpoint")
    r.add_argument("--init", help="start from the weights of another run's ckpt.pt (fine-tuning; tensors whose "
                                  "name or shape differ, e.g. mixture heads after a --m 0 run, start fresh)")
    r.add_argument("--backbone-weights", metavar="FILE_OR_HUB_NAME",
                   help="dla34 only: start the backbone from ImageNet weights, as the official code does "
                        "(Hourglass-104 trains from scratch): the official dla34-ba72cf86.pth, timm's "
                        "model.safetensors / pytorch_model.bin of dla34.in1k, or the hub name timm/dla34.in1k "
                        "(fetched with huggingface_hub: pip install -r requirements-hub.txt). Stored in the "
                        "checkpoint; give it again with --resume. The weights were trained on RGB / 255 "
                        "normalised with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); "
                        "this project feeds RGB with CenterNet's COCO mean (0.470, 0.447, 0.408) and std "
                        "(0.278, 0.274, 0.289), as the official code does (in BGR), and fine-tuning absorbs it")
    r.add_argument("--workers", type=non_negative(int), default=0, help="data-loader worker processes (default 0)")
    r.add_argument("--ema", type=probability, help="evaluate and save an exponential moving average of the weights "
                   "with this decay per step, e.g. 0.998 (default: the preset's; 0 = the last weights)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--eval-every", type=non_negative(int), default=0, help="also evaluate every N epochs (default 0: only at the end)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    r.add_argument("--precision", choices=px.PRECISIONS, default="auto",
                   help="auto (default): bf16 autocast on a CUDA GPU, fp32 on the CPU, channels_last in both; bf16 on a CPU "
                        "with AVX512-BF16 / AMX is faster per train step (bench.py); it kept pose's AP but cost det MDN_3 5 AP "
                        "over three seeds (RESULTS.md). "
                        "The run's first line says which. Losses are float32 in every case")
    r.add_argument("--threads", type=positive(int), help="CPU threads for torch (default: torch's choice, one per core). On a CPU "
                                                         "shared with other busy processes use 1: OpenMP threads waiting on each "
                                                         "other then slowed training here 10-40x")
    return p.parse_args(argv)


def config_from_args(args):
    """The command line -> (ModelConfig, TrainConfig). Defaults that depend on the data:
    synthetic -> the CPU demo preset, real data -> the paper's preset."""
    real = bool(args.data or args.ann)
    if args.init and args.resume:
        raise SystemExit("--init starts a new run from other weights; --resume continues this one: give one")
    if args.init and args.backbone_weights:
        raise SystemExit("--init copies a whole run's weights, backbone included; --backbone-weights starts "
                         "the backbone from ImageNet: give one")
    if args.backbone_weights and not args.resume and not (is_hub_name(args.backbone_weights)
                                                           or Path(args.backbone_weights).is_file()):
        raise SystemExit(f"--backbone-weights {args.backbone_weights}: no such file (nor a hub name "
                         f"such as timm/dla34.in1k)")
    if args.ema == 1:
        raise SystemExit("--ema 1 would never move from the initial weights: give a decay below 1 (0 = off)")
    if args.sigma_floor is not None and args.m == 0:
        raise SystemExit("--sigma-floor is for the mixture (--m >= 1); the --m 0 base predicts no sigma")
    if args.gate_grad is not None and args.m == 0:
        raise SystemExit("--gate-grad is for the mixture (--m >= 1); the --m 0 base has no gate")
    if (args.val_ann or args.val_images) and not args.ann:
        raise SystemExit("--val-ann / --val-images need --ann (with --data the val2017 split is used)")
    if (args.test_ann is None) != (args.test_images is None):
        raise SystemExit("--test-ann and --test-images go together")
    demo = None if args.data or args.ann or args.images else synthetic_coco.ensure_demo_dataset(args.task)
    ann, images = dataset_paths(args.task, "train", args.data, args.ann, args.images) or demo["train"]
    if args.ann:
        val_ann, val_images = args.val_ann or ann, args.val_images or images
        test_ann, test_images = args.test_ann or "", args.test_images or ""
    else:
        val_ann, val_images = dataset_paths(args.task, "val", args.data) or demo["val"]
        # the synthetic demo's held-out test split (another seed); COCO has none with labels
        test_ann, test_images = ("", "") if args.data else demo["test"]
    arch = args.arch or ("hourglass104" if real else "small_dla")
    preset = recipe(arch, args.task)
    epochs, lr_steps = schedule(arch, args.schedule, args.epochs, args.lr_steps, args.task)
    # A flip must give an image the data could contain. Real people and the synthetic shapes
    # are mirror-symmetric; the synthetic figures are not (warm colours mark the left side).
    flip_prob = args.flip_prob if args.flip_prob is not None else 0.0 if not real and args.task == "pose" else 0.5
    weights = {k: getattr(args, "w_" + k) for k in ("hm", "reg", "wh", "hps", "hm_hp", "hp_offset")
               if getattr(args, "w_" + k) is not None}
    if args.gate_grad is not None:
        weights["gate_grad"] = args.gate_grad
    pick = lambda flag, key: flag if flag is not None else preset[key]
    try:
        model_cfg = ModelConfig(task=args.task, m=args.m, arch=arch, mdn_head=args.mdn_head,
                                sigma_floor=args.sigma_floor if args.sigma_floor is not None
                                else default_sigma_floor(args.task, arch),
                                backbone_weights=args.backbone_weights or "")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    cfg = TrainConfig(ann=str(ann), images=str(images), val_ann=str(val_ann), val_images=str(val_images),
                      test_ann=str(test_ann), test_images=str(test_images),
                      input_size=pick(args.input_size, "input_size"), batch_size=pick(args.batch_size, "batch_size"),
                      lr=pick(args.lr, "lr"), optimizer=args.optimizer or preset["optimizer"], epochs=epochs, lr_steps=lr_steps, loss_weights=weights,
                      lr_schedule=args.lr_schedule or preset.get("lr_schedule", "step"),
                      warmup=args.warmup if args.warmup is not None else preset.get("warmup", 0.0),
                      ema=args.ema if args.ema is not None else preset.get("ema", 0.0),
                      flip_prob=flip_prob, augment=not args.no_augment, workers=args.workers, seed=args.seed,
                      out=args.out or str(next_run_folder(Path("runs") / run_name(args.task, args.m), args.resume)),
                      eval_every=args.eval_every,
                      # resolved here, so a checkpoint says what it was trained in (auto may differ elsewhere)
                      precision=px.resolve(args.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                      compile=args.compile, max_images=args.max_images, init=args.init or "",
                      hold_images=args.hold_images if args.hold_images is not None else demo is not None,
                      oks_sigmas=args.oks_sigmas)
    multiple = ARCHS[arch][2]
    if cfg.input_size % multiple:
        raise SystemExit(f"--input-size {cfg.input_size}: {arch} needs a multiple of {multiple}")
    return model_cfg, cfg


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg, cfg = config_from_args(args)
    t0 = time.perf_counter()
    stats, _, test_stats = train(model_cfg, cfg, resume=args.resume)
    what = f"{model_cfg.task}, M = {model_cfg.m}, {model_cfg.arch}: COCO AP on the"
    if stats is not None:
        print(format_table(stats, model_cfg.task, f"{what} validation split {cfg.val_ann}"))
    if test_stats is not None:
        print(format_table(test_stats, model_cfg.task, f"{what} held-out test split {cfg.test_ann}"))
    if stats is not None:
        print(f"{time.perf_counter() - t0:.0f} s in all")
    return stats


if __name__ == "__main__":
    main()
