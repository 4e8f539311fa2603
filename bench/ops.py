"""Benchmark the compiled operators (lib.ops) against MXNet's built-ins on CPU.

FGFA shapes (issue 3): features (N, 1024, 38, 63) for flow_warp; R-FCN score maps
(N, 31 * 7 * 7, 38, 63) with 300 rois per image for psroi_pooling; RPN outputs (N, 18, 38, 63)
for multi_proposal (pre 6000, post 300); N = 1 and 4. The FGFA inference pieces at N = 1:
depth_to_space on the FlowNet decoder's largest map at 600x1000 (2, 128, 75, 125); the channels-last
cache (feature 1024 + embedding 512 channels) against MXNet's transpose(concat); flow_aggregate over a
K = 9 window (19 caches), planar and channels-last, against the composite graph of MXNet's built-ins
(fgfa.aggregation.FlowAggregator). Prints the median time of repeated runs, forward and
forward+backward, and the speed-up (built-in time / ours). multi_proposal has no backward (zero
gradients), flow_aggregate none at all (inference kernel), so only their forward is timed.

    python -m bench.ops --quick          # tiny shapes, 3 repeats: a smoke test
    python -m bench.ops --threads 2      # full FGFA shapes (run on a quiet machine)

Run it as a module from the project root (the FGFA cases import the fgfa package, which
bench/fgfa.py would shadow for a script run from bench/).
"""
if __name__ == "__main__" and not __package__:
    raise SystemExit("run from the project root as: python -m bench.ops [--quick]")

import argparse  # noqa: E402
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 3 repeats")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for both (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 20, quick 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 4)")
    return parser.parse_args(argv)


def cases(quick, batches):
    """(op, description, make_inputs(rng) -> (ours_fn, builtin_fn, inputs, grad_inputs)) per case."""
    channels, height, width = (64, 19, 31) if quick else (1024, 38, 63)
    classes, group = (5, 3) if quick else (31, 7)
    rois_per_image = 40 if quick else 300
    pre, post = (600, 50) if quick else (6000, 300)
    out = []
    for n in batches:
        out.append(("flow_warp", f"data ({n},{channels},{height},{width})",
                    lambda rng, n=n: flow_warp_case(rng, n, channels, height, width)))
        out.append(("psroi_pooling", f"data ({n},{classes * group * group},{height},{width}), "
                                     f"{n * rois_per_image} rois",
                    lambda rng, n=n: psroi_case(rng, n, classes, group, height, width, rois_per_image)))
        out.append(("multi_proposal", f"scores ({n},18,{height},{width}), pre {pre} post {post}",
                    lambda rng, n=n: proposal_case(rng, n, height, width, pre, post)))
    d2s = (2, 16, 19, 31) if quick else (2, 128, 75, 125)
    out.append(("depth_to_space", f"data {d2s}, block 2", lambda rng: depth_to_space_case(rng, d2s)))
    embed, frames = (32, 5) if quick else (512, 19)
    out.append(("channels_last", f"({channels}+{embed},{height},{width})",
                lambda rng: channels_last_case(rng, channels, embed, height, width)))
    for last in (False, True):
        out.append((f"flow_aggregate{' NHWC' if last else ''}",
                    f"{frames} x (1,{channels}+{embed},{height},{width})",
                    lambda rng, last=last: aggregate_case(rng, channels, embed, height, width, frames, last)))
    return out


def depth_to_space_case(rng, shape):
    import mxnet as mx
    from lib import ops
    ours = lambda d: ops.depth_to_space(d, 2, builtin=False)  # noqa: E731
    builtin = lambda d: ops.depth_to_space(d, 2, builtin=True)  # noqa: E731
    return ours, builtin, [mx.nd.array(rng.randn(*shape))], True


def channels_last_case(rng, channels, embed, h, w):
    import mxnet as mx
    from lib import ops
    ours = lambda f, e: ops.channels_last([f, e], builtin=False)  # noqa: E731
    builtin = lambda f, e: ops.channels_last([f, e], builtin=True)  # noqa: E731
    return ours, builtin, [mx.nd.array(rng.randn(1, channels, h, w)), mx.nd.array(rng.randn(1, embed, h, w))], True


def aggregate_case(rng, channels, embed, h, w, frames, channels_last):
    import mxnet as mx
    from fgfa.aggregation import FlowAggregator
    from lib import ops
    caches = [mx.nd.array(rng.randn(1, channels + embed, h, w)) for _ in range(frames)]
    flows = [mx.nd.array(rng.randn(1, 2, h, w) * 3) for _ in range(frames)]
    key = caches[frames // 2]
    window = [ops.channels_last([c[:, :channels], c[:, channels:]]) for c in caches] if channels_last else caches

    def ours(*_):
        return ops.flow_aggregate(window[frames // 2], window, flows, channels, channels_last=channels_last)[0]
    composite = FlowAggregator(channels, frames, builtin_ops=True)

    def builtin(*_):
        return composite(key[:, channels:], mx.nd.concat(*caches, dim=0), mx.nd.concat(*flows, dim=0),
                         mx.nd.ones((1,)))[0]
    return ours, builtin, [key], False


def flow_warp_case(rng, n, c, h, w):
    import mxnet as mx
    from lib import ops
    data = mx.nd.array(rng.randn(n, c, h, w))
    flow = mx.nd.array(rng.randn(n, 2, h, w) * 3)
    ours = lambda d, f: ops.flow_warp(d, f, builtin=False)  # noqa: E731
    builtin = lambda d, f: ops.flow_warp(d, f, builtin=True)  # noqa: E731
    return ours, builtin, [data, flow], True


def psroi_case(rng, n, classes, group, h, w, per_image):
    import mxnet as mx
    import numpy as np
    from lib import ops
    data = mx.nd.array(rng.randn(n, classes * group * group, h, w))
    count = n * per_image
    x1 = rng.uniform(0, w * 16 * 0.8, count)
    y1 = rng.uniform(0, h * 16 * 0.8, count)
    rois = np.stack([np.repeat(np.arange(n), per_image), x1, y1,
                     x1 + rng.uniform(16, w * 16 / 2, count), y1 + rng.uniform(16, h * 16 / 2, count)], 1)
    attrs = dict(spatial_scale=1 / 16, output_dim=classes, pooled_size=group, group_size=group)
    ours = lambda d, r: ops.psroi_pooling(d, r, builtin=False, **attrs)  # noqa: E731
    builtin = lambda d, r: ops.psroi_pooling(d, r, builtin=True, **attrs)  # noqa: E731
    return ours, builtin, [data, mx.nd.array(rois)], True


def proposal_case(rng, n, h, w, pre, post):
    import mxnet as mx
    from lib import ops
    cls = mx.nd.array(rng.rand(n, 18, h, w))
    deltas = mx.nd.array(rng.randn(n, 36, h, w) * 0.2)
    info = mx.nd.array([[h * 16, w * 16, 1.0]] * n)
    attrs = dict(rpn_pre_nms_top_n=pre, rpn_post_nms_top_n=post, threshold=0.7, rpn_min_size=16,
                 scales=(8, 16, 32), ratios=(0.5, 1, 2), feature_stride=16)
    ours = lambda c, d, i: ops.multi_proposal(c, d, i, builtin=False, **attrs)  # noqa: E731
    builtin = lambda c, d, i: ops.multi_proposal(c, d, i, builtin=True, **attrs)  # noqa: E731
    return ours, builtin, [cls, deltas, info], False


def median_ms(fn, inputs, backward, repeat, warmup=2):
    import mxnet as mx
    import numpy as np
    times = []
    if backward:
        for x in inputs:
            x.attach_grad()
        head = None
    for i in range(warmup + repeat):
        mx.nd.waitall()
        start = time.perf_counter()
        if backward:
            with mx.autograd.record():
                out = fn(*inputs)
            if head is None:
                head = mx.nd.ones_like(out)
            out.backward(head)
        else:
            out = fn(*inputs)
        mx.nd.waitall()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main(argv=None):
    args = parse_args(argv)
    # Both MXNet's kernels and ours read the thread count: set it before mxnet is imported.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.pop("MXNET_OMP_MAX_THREADS", None)
    import numpy as np
    from lib import ops
    ops.load()
    ops.set_num_threads(args.threads)
    repeat = args.repeat or (3 if args.quick else 20)
    batches = args.batches or ([1, 2] if args.quick else [1, 4])
    rng = np.random.RandomState(0)
    rows = []
    print(f"threads {args.threads}, median of {repeat} runs{' (quick shapes)' if args.quick else ''}")
    header = f"{'op':<19} {'shapes':<44} {'pass':<9} {'ours ms':>9} {'builtin ms':>11} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for op, description, make in cases(args.quick, batches):
        ours, builtin, inputs, has_backward = make(rng)
        passes = [("fwd", False)] + ([("fwd+bwd", True)] if has_backward else [])
        for label, backward in passes:
            t_ours = median_ms(ours, inputs, backward, repeat)
            t_builtin = median_ms(builtin, inputs, backward, repeat)
            rows.append((op, description, label, t_ours, t_builtin))
            print(f"{op:<19} {description:<44} {label:<9} {t_ours:>9.2f} {t_builtin:>11.2f} "
                  f"{t_builtin / t_ours:>8.1f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
