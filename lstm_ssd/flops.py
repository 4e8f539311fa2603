"""Parameter and multiply-accumulate (MAC) counts of a detector, per extractor step.

MACs are counted for every convolution (``ConvBN`` and the LSTM's separable convs) from the output
shapes seen in one real forward pass (forward hooks), so cut layers, adjusted strides and pruned
channels are all reflected. Element-wise ops (BatchNorm at inference folds into the conv, gates,
activations) are not counted, as in the papers' MAC figures.
"""
import time

import mxnet as mx
import numpy as np

from lib.flops import count_macs_of
from lib.runtime import hybridize_for_inference


def count_params(block):
    """Trainable-size parameters (BatchNorm running statistics excluded), each shared one once."""
    seen, total = set(), 0
    for name, p in block._collect_params_with_prefix().items():
        if id(p) in seen or name.endswith("running_mean") or name.endswith("running_var"):
            continue
        seen.add(id(p))
        total += int(p.data().size)
    return total


def count_macs(detector, extractor="large", ctx=mx.cpu()):
    """MACs of one streaming step with ``extractor`` (extractor + memory step + head) at batch 1.

    Leaves the detector's parts un-hybridized.
    """
    for part in detector.parts().values():  # hooks only fire imperatively; callers re-hybridize
        part.hybridize(False)
    frame = mx.nd.zeros((1, 3) + detector.image_hw, ctx=ctx)

    def one_step():
        with detector.float_parts():     # the int8 copies (quantize_int8) have no hooks
            detector.step(frame, detector.zero_state(1, ctx), extractor)
    return count_macs_of(detector, one_step)


def model_summary(detector):
    """{'params': total, 'params_<extractor>': ..., 'macs_<extractor>': ...} for the results table."""
    out = {"params": count_params(detector)}
    for name in detector.extractor_names:
        out[f"params_{name}"] = count_params(detector.extractor(name))
        out[f"macs_{name}"] = count_macs(detector, name)
    return out


def measure_step_latency(detector, extractor="large", repeats=20, warmup=3, ctx=mx.cpu()):
    """Median seconds of one hybridized streaming step (batch 1) with ``extractor``."""
    for part in detector.parts().values():
        hybridize_for_inference(part, ctx)
    frame = mx.nd.random.uniform(0, 255, (1, 3) + detector.image_hw, ctx=ctx)
    state = detector.zero_state(1, ctx)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        cls, box, state = detector.step(frame, state, extractor)
        mx.nd.waitall()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))
