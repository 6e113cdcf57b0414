"""Reading ImageNet backbone weights: the DLA-34 initialisation of the paper's Table 2 (§4).

The official code builds DLA-34 with ImageNet weights (only Hourglass-104 starts from
scratch). Its download link (dla34-ba72cf86.pth) is dead; timm keeps the same weights on
the Hugging Face hub as `timm/dla34.in1k` (model.safetensors or pytorch_model.bin) under
the same parameter names, so no key mapping is needed. This file turns what
--backbone-weights names (a file or that hub name) into a state dict; dla.py checks and
loads it.

safetensors and huggingface_hub are an optional extra (requirements-hub.txt), imported
only when a .safetensors file or a hub name needs them.
"""
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUB_FILE = "model.safetensors"   # what timm's hub repositories hold besides pytorch_model.bin
EXTRA = "pip install -r requirements-hub.txt"


def is_hub_name(spec):
    """True for 'owner/name' that is no file here and has no weight-file suffix
    (timm/dla34.in1k: its '.in1k' is a tag, not a suffix)."""
    spec = str(spec)
    return (not Path(spec).exists() and spec.count("/") == 1 and not spec.startswith((".", "/"))
            and not spec.endswith(WEIGHT_SUFFIXES))


def hub_url(name):
    return f"https://huggingface.co/{name}/resolve/main/{HUB_FILE}"


def resolve(spec):
    """A weights file or a hub name -> the path of a local file (downloading the hub file
    into the Hugging Face cache). Every failure is one line saying what to do."""
    if not is_hub_name(spec):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such weights file")
        return path
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise RuntimeError(f"{spec} is a hub name: fetching it needs huggingface_hub ({EXTRA}), "
                           f"or download {hub_url(spec)} and pass its path") from None
    try:
        return Path(hf_hub_download(spec, HUB_FILE))
    except Exception as e:  # offline, unknown repository, proxy: all mean "get the file by hand"
        raise RuntimeError(f"could not fetch {spec} ({type(e).__name__}): download {hub_url(spec)} "
                           f"on a machine with internet, copy it here and pass its path") from None


def read_state_dict(path):
    """A flat {name: tensor} from a safetensors file or a torch file (a bare state dict or
    one under 'state_dict'). Anything else is a ValueError naming the file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    safetensors_file = path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    if safetensors_file:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise RuntimeError(f"{path}: reading safetensors needs the safetensors package ({EXTRA})") from None
    try:
        state = load_file(str(path)) if safetensors_file else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors header errors: all mean "not weights"
        raise ValueError(f"{path}: not a readable weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and "kind" in state and "model_config" in state:
        raise ValueError(f"{path}: a checkpoint of this project, not ImageNet weights (use --init for it)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state
