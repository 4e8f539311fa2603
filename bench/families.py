"""Milliseconds per 1280x720 frame of every detector family of the custom recipe, fp32 and int8, on
2 threads and on 1 thread (the small-device estimate), on this machine.

    python -m bench.families                     # the experiments/custom templates, random weights
    python -m bench.families --run m2det=output/custom/m2det_random ...   # trained runs instead
    python -m bench.families --quick             # small inputs, few frames (a smoke run)

Families with a single-frame artifact (ssdlite, m2det, rfcn) are exported with lib.tools.export and
timed through lib.tools.infer's runner (pre-processing, network, decoding and NMS, as on a device);
int8 = lib.tools.quantize of that artifact, calibrated on a few frames, both written by a process of
their own before the timing children start (see prepare_artifacts). The video families run in
process and are quantized there (LoadedModel.quantize_int8): lstm_ssd streams (memory carried; int8:
extractor and head), fgfa streams its window (int8: everything fgfa's TEST.QUANTIZE quantizes). Frames
are the speedtrap frames when ../shared/data/speedtrap is there, else
seeded random images. With random weights the number of boxes reaching NMS differs from a trained
model's, so pass --run for the figures of a trained detector. Each 1-thread figure comes from a
child process started with OMP_NUM_THREADS=1.
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.families [--quick]")

import argparse  # noqa: E402
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from lib.config import PROJECT_ROOT

FAMILIES = ("ssdlite", "m2det", "rfcn", "lstm_ssd", "fgfa")
SINGLE_FRAME = ("ssdlite", "m2det", "rfcn")     # exported artifacts; the others run in process
SPEEDTRAP = os.path.join(os.path.dirname(PROJECT_ROOT), "shared", "data", "speedtrap", "images")


def frames(count, size):
    """BGR frames: speedtrap's first ``count`` (resized to ``size`` = (w, h)) or seeded noise."""
    import cv2
    if os.path.isdir(SPEEDTRAP):
        from lib.tools.infer import iterate_frames
        out = []
        for _, frame in iterate_frames(SPEEDTRAP):
            out.append(cv2.resize(frame, size) if frame.shape[1::-1] != size else frame)
            if len(out) >= count:
                break
        return out
    rng = np.random.default_rng(0)
    return [cv2.GaussianBlur(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), (5, 5), 0)
            for _ in range(count)]


def loaded_model(family, run=None, quick=False):
    """A LoadedModel: the trained run, or the family's recipe template with random weights."""
    import mxnet as mx
    from experiments.custom import recipe
    from lib.family import LoadedModel, get_family, load_model
    if run:
        return load_model(run)
    template = os.path.join(PROJECT_ROOT, "experiments", "custom", f"{family}.yaml")
    overrides = []
    if quick:
        overrides = {"ssdlite": ["INPUT.SIZE=[96]"], "m2det": ["INPUT.SIZE=[320]"], "lstm_ssd": ["INPUT.SIZE=[96]"],
                     "rfcn": ["INPUT.SHORT_SIDE=96", "INPUT.MAX_SIZE=160"],
                     "fgfa": ["INPUT.SHORT_SIDE=96", "INPUT.MAX_SIZE=160"]}[family]
    cfg = recipe.load_recipe_config(template, overrides)
    fam = recipe.family_config(cfg, ["radar"], 100)
    mx.random.seed(0)
    net = get_family(family).build(fam, 1, mx.cpu())
    return LoadedModel(family, net, fam, ["radar"], mx.cpu())


def median_ms(fn, inputs, warmup=2):
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs[warmup:]:
        start = time.perf_counter()
        fn(x)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def prepare_artifacts(family, run, quick, workdir, count):
    """Export the fp32 artifact and quantize it (int8) into ``workdir`` (single-frame families).

    Done in a process of its own: after MXNet's int8 calibration a process runs the fp32 graph up to
    4x slower with 2 threads (7 -> 28 ms for SSDLite here; an extra engine thread), so the timing
    children only load finished artifacts."""
    import cv2
    from lib.tools.quantize import quantize
    fp32_dir, int8_dir, calib = (os.path.join(workdir, d) for d in ("fp32", "int8", "calib"))
    loaded_model(family, run, quick).export(fp32_dir)
    os.makedirs(calib, exist_ok=True)
    for i, frame in enumerate(frames(min(count, 4), frame_size(quick))):
        cv2.imwrite(os.path.join(calib, f"{i:03d}.jpg"), frame)
    # checked like a user's model: a graph that breaks the boxes is redone with the elementwise adds in float
    quantize(fp32_dir, calib, int8_dir, num_calib=4)


def frame_size(quick):
    return (320, 180) if quick else (1280, 720)


def time_family(family, run, quick, count, workdir=None):
    """{"fp32": ms, "int8": ms or None, "note": str} at the current thread count."""
    import cv2
    import mxnet as mx
    bgr = frames(count, frame_size(quick))
    if family in SINGLE_FRAME:
        from lib.tools.infer import ExportedDetector
        return {"fp32": median_ms(ExportedDetector(os.path.join(workdir, "fp32")), bgr),
                "int8": median_ms(ExportedDetector(os.path.join(workdir, "int8")), bgr),
                "note": "exported artifact via lib.tools.infer"}
    model = loaded_model(family, run, quick)
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in bgr]
    result = {"fp32": stream_ms(model, rgb)}   # before the in-process quantization (see prepare_artifacts)
    model.quantize_int8(rgb[:4])
    result["int8"] = stream_ms(model, rgb)
    if family == "lstm_ssd":
        result["note"] = "in process, streaming (int8: extractor and head, the LSTM in float)"
    else:
        result["note"] = (f"in process, window K={model.cfg.TEST.K} (int8: backbone, feature conv, head convs, "
                          f"embedding and FlowNet, quantized in the timing process)")
    mx.nd.waitall()
    return result


def stream_ms(model, rgb):
    """Per-frame ms of a streamed video (the first outputs, graph building, excluded)."""
    import mxnet as mx
    model.detect_stream(rgb[:4])  # warm-up
    mx.nd.waitall()
    start = time.perf_counter()
    model.detect_stream(rgb)
    mx.nd.waitall()
    return 1000 * (time.perf_counter() - start) / len(rgb)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, few frames")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--run", action="append", default=[], metavar="FAMILY=RUN_DIR",
                        help="time this trained recipe run instead of random weights")
    parser.add_argument("--frames", type=int, default=None, help="timed frames (default 20, quick 4)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)     # time one family, print JSON
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)   # export + quantize one family
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run)
    count = args.frames or (4 if args.quick else 20)
    if args.prepare:
        prepare_artifacts(args.prepare, runs.get(args.prepare), args.quick, args.workdir, count)
        return 0
    if args.child:
        print(json.dumps(time_family(args.child, runs.get(args.child), args.quick, count + 2, args.workdir)))
        return 0
    rows = {}
    common = (["--quick"] if args.quick else []) + [f"--run={k}={v}" for k, v in runs.items()]

    def child(what, family, threads, workdir):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "bench.families", what, family, "--frames", str(count), "--workdir", workdir]
        proc = subprocess.run(cmd + common, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{family} {what} ({threads} threads) failed:\n{proc.stderr[-3000:]}")
        return proc.stdout
    for family in args.families.split(","):
        if family not in FAMILIES:
            parser.error(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
        rows[family] = {}
        with tempfile.TemporaryDirectory(prefix=f"bench_{family}_") as workdir:
            if family in SINGLE_FRAME:
                child("--prepare", family, 2, workdir)
            for threads in (2, 1):
                rows[family][threads] = json.loads(child("--child", family, threads, workdir).strip().splitlines()[-1])
                print(f"{family} {threads} thread(s): {rows[family][threads]}", flush=True)
    size = "320x180" if args.quick else "1280x720"
    print(f"\n| family | weights | fp32 ms (2 thr) | int8 ms (2 thr) | fp32 ms (1 thr) | int8 ms (1 thr) | how |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")

    def fmt(value):
        return "-" if value is None else f"{value:.1f}"
    for family, by_threads in rows.items():
        two, one = by_threads[2], by_threads[1]
        print(f"| {family} | {'trained' if family in runs else 'random'} | {fmt(two['fp32'])} | {fmt(two['int8'])} | "
              f"{fmt(one['fp32'])} | {fmt(one['int8'])} | {two['note']}, {size} frames |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"frame": size, "results": rows, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
