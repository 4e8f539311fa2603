"""Parameter and multiply-accumulate (MAC) counts of a detector, per extractor step.

MACs are counted for every convolution (``ConvBN`` and the LSTM's separable convs) from the output
shapes seen in one real forward pass (forward hooks), so cut layers, adjusted strides and pruned
channels are all reflected. Element-wise ops (BatchNorm at inference folds into the conv, gates,
activations) are not counted, as in the papers' MAC figures.
"""
import mxnet as mx
import numpy as np

from lib.runtime import hybridize_for_inference

from .layers import ConvBN
from .lstm_cell import SepConv


def count_params(block):
    """Trainable-size parameters (BatchNorm running statistics excluded), each shared one once."""
    seen, total = set(), 0
    for name, p in block._collect_params_with_prefix().items():
        if id(p) in seen or name.endswith("running_mean") or name.endswith("running_var"):
            continue
        seen.add(id(p))
        total += int(p.data().size)
    return total


def _conv_macs(block, output):
    if isinstance(output, (list, tuple)):   # grouped SepConv: one output per group, same size
        output = output[0]
    _, _, h, w = output.shape
    if isinstance(block, ConvBN):
        return block.macs(h, w)
    # SepConv: depthwise k x k on in_ch + grouped 1x1 in_ch -> out_ch
    k = block.kernel * block.kernel
    return h * w * block.in_ch * k + h * w * block.out_ch * (block.in_ch // block.groups)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def count_macs(detector, extractor="large", ctx=mx.cpu()):
    """MACs of one streaming step with ``extractor`` (extractor + memory step + head) at batch 1.

    Leaves the detector's parts un-hybridized.
    """
    counted = []
    handles = []
    seen = set()
    for part in (detector.extractor(extractor), detector.memory, detector.project, detector.head):
        if part is None:
            continue
        for b in _walk(part):
            if isinstance(b, (ConvBN, SepConv)) and id(b) not in seen:
                seen.add(id(b))
                handles.append(b.register_forward_hook(lambda blk, inp, out: counted.append(_conv_macs(blk, out))))
    for part in detector.parts().values():  # hooks only fire imperatively; callers re-hybridize
        part.hybridize(False)
    try:
        frame = mx.nd.zeros((1, 3) + detector.image_hw, ctx=ctx)
        with detector.float_parts():     # the int8 copies (quantize_int8) have no hooks
            detector.step(frame, detector.zero_state(1, ctx), extractor)
    finally:
        for h in handles:
            h.detach()
    return int(sum(counted))


def model_summary(detector):
    """{'params': total, 'params_<extractor>': ..., 'macs_<extractor>': ...} for the results table."""
    out = {"params": count_params(detector)}
    for name in detector.extractor_names:
        out[f"params_{name}"] = count_params(detector.extractor(name))
        out[f"macs_{name}"] = count_macs(detector, name)
    return out


def measure_step_latency(detector, extractor="large", repeats=20, warmup=3, ctx=mx.cpu()):
    """Median seconds of one hybridized streaming step (batch 1) with ``extractor``."""
    import time


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
