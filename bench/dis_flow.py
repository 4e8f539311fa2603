"""Time OpenCV's DIS optical flow (lib.flow) on real 1280x720 speedtrap frame pairs, per preset and scale.

What FGFA would pay per neighbour with ``NETWORK.FLOW: dis`` at test time (frames in, flow on the
stride-16 feature grid out: ``DISFlow.grid``), and what one teacher flow costs in training (forward
+ backward flow and the consistency check: ``DISFlow.with_mask``). Also the flow's distance, on the
feature grid, from the medium preset at full resolution (the teacher's default), in feature pixels
over the cells whose forward and backward flows agree. Pairs: frames 1, 2 and 3 apart in speedtrap
snippets 4 and 7. Prints median milliseconds over all pairs and repeats.

    python -m bench.dis_flow [--threads 2] [--repeat 5] [--quick]
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.dis_flow [--quick]")

import argparse  # noqa: E402
import os
import time

import cv2
import numpy as np

from lib.config import PROJECT_ROOT
from lib.dataset import read_image
from lib.flow import DIS_PRESETS, DISFlow, mask_to_grid

SPEEDTRAP = os.path.join(PROJECT_ROOT, "..", "shared", "data", "speedtrap")
PAIRS = [(150, 151), (160, 162), (170, 173), (320, 321), (340, 342), (360, 363)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per pair (default 5)")
    parser.add_argument("--quick", action="store_true", help="two pairs, one run each")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    pairs = PAIRS[:2] if args.quick else PAIRS
    repeat = 1 if args.quick else args.repeat
    frames = [tuple(read_image(os.path.join(SPEEDTRAP, "images", f"frame{n}.jpg")) for n in pair) for pair in pairs]
    height, width = frames[0][0].shape[:2]
    reference = []
    teacher = DISFlow("medium", 1.0)
    for first, second in frames:
        _, valid = teacher.with_mask(first, second)
        reference.append((teacher.grid(first, second, 16), mask_to_grid(valid, 16) > 0.5))
    print(f"DIS on {len(pairs)} speedtrap pairs of {width}x{height}, {args.threads} OpenCV threads, "
          f"OpenCV {cv2.__version__}")
    print(f"{'preset':>10} {'scale':>5} {'grid flow ms':>12} {'fwd+bwd+check ms':>16} "
          f"{'EPE vs medium@1 (feat px)':>26}")
    for preset in DIS_PRESETS:
        for scale in (1.0, 0.5):
            dis = DISFlow(preset, scale)
            dis.grid(*frames[0], 16)             # warm-up (buffers)
            grid_times, check_times, errors = [], [], []
            for (first, second), (ref, ok) in zip(frames, reference):
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    grid = dis.grid(first, second, 16)
                    grid_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dis.with_mask(first, second)
                check_times.append(time.perf_counter() - t0)
                errors.append(np.linalg.norm(grid - ref, axis=2)[ok])
            epe = float(np.concatenate(errors).mean())
            print(f"{preset:>10} {scale:5.2f} {1000 * np.median(grid_times):12.1f} "
                  f"{1000 * np.median(check_times):16.1f} {epe:26.3f}")


if __name__ == "__main__":
    main()
