"""The benchmarks run end to end in their --quick mode (tiny shapes), so they do not rot between the
quiet-machine runs whose numbers go into the issue notes. Nothing here checks a time: only that each
benchmark finishes, prints its table and (where it has one) writes valid JSON."""
import json
import os
import subprocess
import sys

import pytest

from lib.config import PROJECT_ROOT


def run_bench(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable] + args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["bench/nms.py", "--quick"], "box_nms/ours"),
    (["-m", "bench.ops", "--quick"], "flow_aggregate NHWC"),
    (["-m", "bench.lstm_ssd", "--quick"], "the same + box fusion"),
    (["-m", "bench.train_step", "--quick"], "lib.layers.relu6"),
    (["-m", "bench.amx", "--quick"], "VNNI / default"),
    (["-m", "bench.dist", "--quick"], "measured: servers in / out per step"),
    (["-m", "bench.allocator", "--quick"], "the steps per second of glibc's default"),
], ids=["nms", "ops", "lstm_ssd", "train_step", "amx", "dist", "allocator"])
def test_bench_quick_runs(args, expected, tmp_path):
    assert expected in run_bench(args, tmp_path)


@pytest.mark.slow
def test_bench_fgfa_quick_writes_json(tmp_path):
    out = tmp_path / "fgfa.json"
    assert "FGFA / baseline" in run_bench(["-m", "bench.fgfa", "--quick", "--json", str(out)], tmp_path)
    direct, chained, int8, dis = json.loads(out.read_text())["results"]
    for row in (direct, chained, int8, dis):
        assert row["ratio"] > 0 and row["fgfa"]["K"] > 0 and len(row["fgfa"]["input"]) == 2
        assert row["baseline"]["features_gmacs"] > 0
    assert "flows_2K" in direct["fgfa"]["parts_ms"] and "flows_2" in chained["fgfa"]["parts_ms"]
    # DIS flows replace the FlowNet: no halving for it
    assert "flows_2K" in dis["fgfa"]["parts_ms"] and "halving" not in dis["fgfa"]["parts_ms"]


@pytest.mark.slow
def test_bench_fgfa_int8_ablation_quick(tmp_path):
    out = tmp_path / "int8.json"
    text = run_bench(["-m", "bench.fgfa", "--int8-ablation", "quick", "--repeats", "2", "--json", str(out)],
                     tmp_path)
    assert "int8 ablation" in text and "GMAC/s" in text
    rows = json.loads(out.read_text())["ms_per_frame"]
    assert len(rows) == 4 and all(ms > 0 for ms in rows.values())


@pytest.mark.slow
def test_bench_m2det_quick_writes_json(tmp_path):
    out = tmp_path / "m2det.json"
    text = run_bench(["-m", "bench.m2det", "--quick", "--out", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert "soft-NMS (linear) / hard NMS" in text
    assert set(result["nms_ms"]) == {"hard", "linear", "gaussian"} and result["nms_candidates_per_image"] > 0
    assert all(v > 0 for v in result["gmacs"].values())


@pytest.mark.slow
def test_bench_families_quick_writes_json(tmp_path):
    out = tmp_path / "families.json"
    # one family of each module (fgfa.family: rfcn, fgfa; lstm_ssd.family: ssdlite, lstm_ssd): the bench's
    # path is the same for the others, and each family costs ~25 s of subprocesses
    text = run_bench(["-m", "bench.families", "--quick", "--families", "rfcn,lstm_ssd", "--json", str(out)], tmp_path)
    result = json.loads(out.read_text())["results"]
    assert "| rfcn | random |" in text
    for family in ("rfcn", "lstm_ssd"):
        for threads in ("1", "2"):
            assert result[family][threads]["fp32"] > 0 and result[family][threads]["int8"] > 0
