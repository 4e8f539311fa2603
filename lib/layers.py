"""Small layers shared by the MobileNet-based detectors (M2Det's MobileNetV2, SSDLite, LSTM-SSD).

ReLU6 = min(max(x, 0), 6). MXNet 1.9's CPU ``clip`` kernel, which gluoncv and the TF ports use for it,
is slow: on (8, 16, 192, 192) forward + backward takes 58 ms against 21 ms for
minimum(maximum(x, 0), 6), and it was a quarter of an M2Det MobileNetV2 training step
(``python -m bench.train_step``). The two forms give the same values and the same gradients, also at
x == 0 and x == 6, where both pass the gradient. That matters: relu's zero gradient at exactly 0 lets
channels that BatchNorm maps to exactly beta = 0 die, and a tiny LSTM-SSD then stopped learning.
In inference graphs ``clip`` stays, because the MKLDNN backend fuses conv + BatchNorm + clip into one
(int8-quantizable) op and does not fuse the minimum.
"""
import contextlib

from mxnet import autograd
from mxnet.gluon import nn

_fast_training_form = True


@contextlib.contextmanager
def clip_relu6():
    """Within this context, networks built or traced use ``clip`` in training too (the reference
    form: benchmarks and tests compare the two)."""
    global _fast_training_form
    _fast_training_form = False
    try:
        yield
    finally:
        _fast_training_form = True


def relu6(F, x):
    """min(max(x, 0), 6): the fast form when autograd is training, ``clip`` otherwise (fusable).

    The form is chosen when the graph is traced, so a block hybridized in training and then called for
    inference keeps the training form: same values, only without the fusion.
    """
    if _fast_training_form and autograd.is_training():
        return F.minimum(F.maximum(x, 0.0), 6.0)
    return F.clip(x, 0.0, 6.0)


class ReLU6(nn.HybridBlock):
    """``relu6`` as a block (a drop-in for gluoncv's ``ReLU6``, which has no parameters either)."""

    def hybrid_forward(self, F, x):
        return relu6(F, x)


def replace_relu6(block):
    """Swap every gluoncv ``ReLU6`` child of ``block`` (recursively) for ``ReLU6``; returns the count.

    Parameter names are unchanged (neither block has parameters), so gluoncv weight files still load.
    """
    from gluoncv.nn.block import ReLU6 as GluoncvReLU6
    count = 0
    for name, child in list(block._children.items()):
        if isinstance(child, GluoncvReLU6):
            replacement = ReLU6(prefix=child.prefix)
            block._children[name] = replacement
            # a child registered as an attribute (self.act = ...) is referenced there too; Block's
            # __setattr__ refuses a block of another type, and _children is already updated
            for attr, value in list(vars(block).items()):
                if value is child:
                    object.__setattr__(block, attr, replacement)
            count += 1
        else:
            count += replace_relu6(child)
    return count
