"""bench.py runs its rows in subprocesses and prints one table (timings are not asserted:
speed targets are read off the table, never tested)."""
import argparse
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
from util.recipes import preset
from util import precision as px
from model import ModelConfig, build_model


def test_every_architecture_has_a_base_and_two_mdn3_rows():
    specs = [s for s in bench.rows(argparse.Namespace(device="cpu", quick=True, compile=False)) if s["kind"] == "train"]
    for arch in ("small_dla", "small_hourglass", "dla34", "hourglass104"):
        ms = sorted((s["m"], s.get("head", "")) for s in specs if s["arch"] == arch)
        assert set(ms) == {(0, ""), (3, ""), (3, "shared")}, arch


def test_table_and_overhead_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--only", "small_dla det", "--json", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    auto = px.resolve("auto", torch.device("cpu"))
    other = {"bf16": "fp32", "fp32": "bf16"}[auto]
    assert [r["row"] for r in rows] == [f"train small_dla det 0 128 32 cpu {auto}", f"train small_dla det 3 128 32 cpu {auto}",
                                        f"train small_dla det 3 shared 128 32 cpu {auto}",
                                        f"train small_dla det 3 128 32 cpu {other}"]
    assert all(r["train ms/img"] > 0 and r["peak MB"] > 0 for r in rows)
    # FLOPs do not depend on the machine: the extra heads must cost something, the shared less
    assert rows[1]["fwd GFLOP/img"] > rows[2]["fwd GFLOP/img"] > rows[0]["fwd GFLOP/img"] > 0
    assert "MDN_3 vs base train-step overhead, small_dla det 128px" in printed
    assert "MDN_3 shared head vs base train-step overhead, small_dla det 128px" in printed
    assert "bf16 vs fp32, small_dla det 3 128 32 cpu: train step x" in printed


def test_the_pose_demo_old_and_new_steps_are_timed_in_turn(capsys):
    """The pair row times the old recipe's step and today's preset's in one process and
    prints both, and the per-job ratio (per image x epochs)."""
    bench.main(["--quick", "--only", "pair small_dla pose"])
    printed = capsys.readouterr().out
    old, new = bench.demo_specs(px.resolve("auto", torch.device("cpu")), "cpu")
    assert "contiguous" in bench.row_name(old) and old["batch"] == bench.OLD_DEMO["batch"]
    for spec in (old, new):
        assert f"interleaved: {bench.row_name(spec)}" in printed
    assert "pose demo train step, today's preset" in printed and "interleaved in one process" in printed


@pytest.mark.parametrize("task", ["det", "pose"])
def test_mdn_flops_overhead_is_the_extra_heads(task):
    """The MDN_3 - base forward FLOPs, counted by torch, equal a hand count of what MDN adds.
    Separate heads: two heads (mdn_sigma: 3x3 conv c->256, 1x1 256->6; mdn_logits: 3x3
    conv c->256, 1x1 256->3) and the 3x wider last layer of the regression head (2 -> 6 for
    det, 34 -> 102 for pose). Shared head: only the wider last layer, 256 -> 3D + 6 + 3.
    A conv costs 2 * k*k * c_in * c_out FLOPs per output pixel."""
    classes = 80 if task == "det" else 1
    D = 2 if task == "det" else 34
    flops = {}
    for m, head in ((0, "separate"), (3, "separate"), (3, "shared")):
        model = build_model(ModelConfig(task=task, m=m, num_classes=classes, mdn_head=head)).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, 128, 128))
        flops[m, head] = counter.get_total_flops()
    c, hidden, pixels = model.heads[0]["hm"][0].in_channels, model.heads[0]["hm"][0].out_channels, 32 * 32
    conv = lambda k, cin, cout: 2 * k * k * cin * cout * pixels
    extra = (conv(3, c, hidden) + conv(1, hidden, 6) + conv(3, c, hidden) + conv(1, hidden, 3)
             + conv(1, hidden, 3 * D) - conv(1, hidden, D))
    assert flops[3, "separate"] - flops[0, "separate"] == extra
    assert flops[3, "shared"] - flops[0, "separate"] == conv(1, hidden, 3 * D + 6 + 3) - conv(1, hidden, D)


def test_compile_adds_todays_step_compiled_to_the_pair_row():
    """--compile times today's preset a second time, through torch.compile, in the same
    interleaved row (the compilation itself is not run here: it takes about a minute)."""
    def pair_specs(compile):
        args = argparse.Namespace(device="cpu", quick=True, compile=compile)
        return [s for s in bench.rows(args) if s["kind"] == "pair"][0]["specs"]
    pair, plain = pair_specs(True), pair_specs(False)
    assert len(pair) == len(plain) + 1 and pair[-1] == dict(plain[-1], compile=True)
    assert bench.row_name(dict(kind="train", **pair[-1], device="cpu")).endswith(" compiled")
    assert not bench.row_name(dict(kind="train", **plain[-1], device="cpu")).endswith(" compiled")


def test_the_parts_row_splits_todays_step(capsys):
    """The parts row times backbone, heads, loss, backward and the preset's optimiser apart;
    each is positive and the backward pass is not free."""
    bench.main(["--quick", "--only", "parts small_dla pose"])
    printed = capsys.readouterr().out
    rows = {line.split(" (")[0].strip(): float(line.split()[-1]) for line in printed.splitlines()
            if line.startswith("  ") and " %)" in line}
    optimiser = {"muon": "Muon + Adam", "adam": "Adam"}[preset("small_dla", "pose").get("optimizer", "adam")]
    assert set(rows) == {"backbone forward", "heads forward", "loss", "backward", optimiser}
    assert all(ms > 0 for ms in rows.values()) and rows["backward"] > rows["loss"]
