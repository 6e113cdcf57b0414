"""bench.py runs its rows in subprocesses and prints one table (timings are not asserted:
speed targets are read off the table, never tested)."""
import json

import bench


def test_every_architecture_has_a_base_and_mdn3_pair():
    specs = [s for s in bench.rows(type("A", (), {"device": "cpu", "quick": True})()) if s["kind"] == "train"]
    for arch in ("small_dla", "small_hourglass", "dla34", "hourglass104"):
        ms = {s["m"] for s in specs if s["arch"] == arch}
        assert ms == {0, 3}, arch


def test_table_and_overhead_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--only", "small_dla det", "--json", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["row"] for r in rows] == ["train small_dla det 0 128 32 cpu", "train small_dla det 3 128 32 cpu"]
    assert all(r["train ms/img"] > 0 and r["peak MB"] > 0 for r in rows)
    assert "MDN_3 vs base train-step overhead, small_dla det 128px" in printed
