"""The grader's child: runs one assignment's calls on the student's modules and hands back
plain data. The grader runs this file in a sandbox (course/sandbox.py); the parent runs
`perform` on the reference modules, so both sides call the functions the same way.

    python -I child.py STUDENT_DIR CALLS_FILE OUT_DIR CPU_SECONDS MEMORY_MB

CALLS_FILE is a torch.save'd dict {"module": name, "calls": [call, ...]} (loaded with
weights_only=True). A call is a dict: function (a name in the module, or "round_trip", the
harness below), args, kwargs, autocast (bool: bf16 autocast on the CPU), grad (None or
{"wrt": [arg indices], "weights": tensor like the output}) and return_args (indices of
arguments to hand back after the call, for functions that write into them). numpy arrays
travel as {"__ndarray__": tensor}. The answer to call i is OUT_DIR/i.pt: {"value", "args",
"grads", "error"}; error is None or {"types": the exception's class names, "message"}.

Everything this process writes after the student's module is imported is the student's
claim: the parent loads it with weights_only=True and checks it against the reference.
Nothing here decides a grade. Pure Python, torch and numpy: no project module is imported
except through the student's folder.
"""
import importlib
import sys

NDARRAY = "__ndarray__"


def decode_value(x):
    """Transport form -> call form (numpy arrays back from tensors)."""
    if isinstance(x, dict):
        if set(x) == {NDARRAY}:
            return x[NDARRAY].numpy().copy()
        return {k: decode_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(decode_value(v) for v in x)
    return x


def encode_value(x):
    """Call form -> transport form: tensors detached to plain CPU tensors, numpy arrays
    wrapped, containers recursed; anything else is handed back as it is (the parent
    refuses what torch.load(weights_only=True) cannot read)."""
    import numpy as np
    import torch
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, np.ndarray):
        return {NDARRAY: torch.from_numpy(np.array(x))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: encode_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(encode_value(v) for v in x)
    return x


def round_trip(boxes, classes, num_classes, out_size, max_objs, keypoints=None, M=3, k=20):
    """Ground truth -> coco_data.render_targets -> the raw outputs a perfect network gives
    (hm logits +10 at the target's 1s, -10 elsewhere; reg, wh / hps at the centre cells, all
    in component 0 whose logit wins) -> decode.decode. Returns the decoded dict."""
    import numpy as np
    import torch
    import coco_data
    import decode
    t = coco_data.render_targets(boxes, classes, num_classes, out_size, max_objs, keypoints)
    t = {key: torch.from_numpy(np.asarray(v)) for key, v in t.items()}
    H = W = int(out_size)
    valid = t["mask"].bool()

    def scatter(values, channels):
        out = torch.zeros(1, channels, H * W)
        out[0, :values.shape[1], t["ind"][valid]] = values[valid].T
        return out.view(1, channels, H, W)

    key = "wh" if keypoints is None else "hps"
    out = {"hm": torch.where(t["hm"][None] == 1, 10.0, -10.0), "reg": scatter(t["reg"], 2),
           key: scatter(t[key], M * t[key].shape[1])}
    if keypoints is not None:
        out["wh"] = scatter(t["wh"], 2)
    out["mdn_logits"] = torch.full((1, M, H, W), -10.0)
    out["mdn_logits"][:, 0] = 10.0
    out["mdn_sigma"] = torch.ones(1, 2 * M, H, W)
    return decode.decode(out, k=k)


HARNESS = {"round_trip": round_trip}


def perform(module, call):
    """Run one call on module (its functions looked up by name) and return the answer dict
    in call form. An exception becomes the answer's error."""
    import torch
    args, kwargs = list(decode_value(call["args"])), decode_value(call.get("kwargs", {}))
    answer = {"value": None, "args": [], "grads": [], "error": None}
    try:
        func = HARNESS[call["function"]] if call["function"] in HARNESS else getattr(module, call["function"])
        grad = call.get("grad")
        if grad:
            for i in grad["wrt"]:
                args[i] = args[i].detach().clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(call.get("autocast"))):
            value = func(*args, **kwargs)
        if grad:
            inputs = [args[i] for i in grad["wrt"]]
            grads = torch.autograd.grad((value.float() * grad["weights"]).sum(), inputs, allow_unused=True)
            answer["grads"] = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
        answer["value"] = value
        answer["args"] = [args[i] for i in call.get("return_args", ())]
    except Exception as e:  # the student's error is an answer, reported by type and message
        answer["error"] = {"types": [c.__name__ for c in type(e).__mro__], "message": str(e)[:2000]}
    return answer


def limit(cpu_seconds, memory_mb):
    """CPU time and address space of this process (hard limits: no way back up once the
    sandbox has dropped its capabilities), and no core files."""
    import resource
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(student, calls_file, out_dir, cpu_seconds, memory_mb):
    limit(int(cpu_seconds), int(memory_mb))
    import torch
    torch.set_num_threads(1)
    request = torch.load(calls_file, weights_only=True)
    sys.path.insert(0, student)
    sys.dont_write_bytecode = True
    try:
        module = importlib.import_module(request["module"])
    except BaseException as e:  # the import itself failed: every call answers with it
        error = {"types": [c.__name__ for c in type(e).__mro__], "message": f"importing {request['module']}: {e}"[:2000]}
        module = None
    for i, call in enumerate(request["calls"]):
        answer = perform(module, call) if module is not None else {
            "value": None, "args": [], "grads": [], "error": error}
        answer = {key: encode_value(v) for key, v in answer.items()}
        torch.save(answer, f"{out_dir}/{i}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
