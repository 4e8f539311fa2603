"""Benchmark hard NMS: lib.nms.nms (compiled) vs mx.nd.contrib.box_nms vs the numpy reference.

Random boxes in a 1000x1000 image (sides 10..200 px, distinct scores), IoU threshold 0.5, on
1k, 6k and 20k boxes. Each time covers the whole call on the (N,5) input (sorting included;
box_nms until its output is ready). Prints medians and ratios (other / ours) and checks that all
three keep the same boxes.

    python bench/nms.py --quick          # 200 / 500 / 1000 boxes, 3 repeats: a smoke test
    python bench/nms.py --threads 2      # full sizes (run on a quiet machine)
"""
import argparse
import os
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 repeats")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for box_nms (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 15, quick 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="box counts (default 1000 6000 20000)")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    parser.add_argument("--numpy-max", type=int, default=20000,
                        help="skip the (slow) numpy reference above this many boxes")
    return parser.parse_args(argv)


def random_dets(rng, n):
    import numpy as np
    xy = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(10, 200, (n, 2))
    scores = (rng.permutation(n) + 1.0) / (n + 1)
    return np.concatenate([xy, np.minimum(xy + wh, 1000), scores[:, None]], axis=1).astype(np.float32)


def median_time(fn, repeat):
    import numpy as np
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    args = parse_args(argv)
    # box_nms is an OpenMP operator: its thread count must be set before mxnet is imported.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import mxnet as mx
    import numpy as np

    from lib.nms import nms, nms_np

    sizes = args.sizes or ([200, 500, 1000] if args.quick else [1000, 6000, 20000])
    repeat = args.repeat or (3 if args.quick else 15)
    rng = np.random.RandomState(0)
    print(f"hard NMS, IoU {args.iou}, median of {repeat} runs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
          f"(ours is single-threaded)")
    header = f"{'boxes':>7} {'kept':>6} {'ours ms':>9} {'box_nms ms':>11} {'numpy ms':>10} " \
             f"{'box_nms/ours':>13} {'numpy/ours':>11}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        dets = random_dets(rng, n)
        # box_nms layout: [score, x1, y1, x2, y2, row index] so the kept rows can be identified
        nd_data = mx.nd.array(np.concatenate([dets[:, 4:5], dets[:, :4], np.arange(n)[:, None]], axis=1))

        def run_box_nms():
            out = mx.nd.contrib.box_nms(nd_data, overlap_thresh=args.iou, valid_thresh=0, topk=-1,
                                        coord_start=1, score_index=0, id_index=-1, force_suppress=True)
            out.wait_to_read()
            return out

        kept = nms(dets, args.iou)
        box_out = run_box_nms().asnumpy()
        box_kept = np.rint(box_out[box_out[:, 0] >= 0, 5]).astype(np.int64)
        if not np.array_equal(kept, box_kept):
            raise SystemExit(f"mismatch with box_nms at {n} boxes: {len(kept)} vs {len(box_kept)} kept")
        t_ours = median_time(lambda: nms(dets, args.iou), repeat)
        t_box = median_time(run_box_nms, repeat)
        t_np = None
        if n <= args.numpy_max:
            if not np.array_equal(kept, nms_np(dets, args.iou)):
                raise SystemExit(f"mismatch with the numpy reference at {n} boxes")
            t_np = median_time(lambda: nms_np(dets, args.iou), max(1, min(repeat, 3)))
        np_ms = f"{t_np * 1e3:10.2f}" if t_np is not None else f"{'-':>10}"
        np_ratio = f"{t_np / t_ours:11.1f}" if t_np is not None else f"{'-':>11}"
        print(f"{n:7d} {len(kept):6d} {t_ours * 1e3:9.2f} {t_box * 1e3:11.2f} {np_ms} "
              f"{t_box / t_ours:13.1f} {np_ratio}")

if __name__ == "__main__":
    main()
