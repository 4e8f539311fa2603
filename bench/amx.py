"""Benchmark: int8 inference with Intel AMX (what ``import lib`` turns on) vs AVX-512 VNNI alone.

oneDNN's ISA is fixed once per process, so each setting runs in a fresh process: one with the
default of ``import lib`` (AMX on where the CPU has it) and one where the user limited the ISA with
DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI (which lib keeps). Each process times a stack of dense 3x3
convolutions and a ResNet-50 v1 (gluoncv, random weights, to output stride 32), float and int8
(MXNet's MKLDNN quantization; ResNet-18 with --quick), and prints ms, GMAC/s and the ratios side by side.

    python -m bench.amx [--size 224] [--repeats 10] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, sys, time
import lib
import mxnet as mx
from mxnet.gluon import nn
from lib.flops import conv_macs
from lib.runtime import hybridize_for_inference, quantize_block
size, repeats, quick = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"

def conv_stack():
    net = nn.HybridSequential()
    channels = 32 if quick else 512
    for _ in range(4):
        net.add(nn.Conv2D(channels, 3, padding=1, in_channels=channels), nn.Activation("relu"))
    return net, (1, channels, 16 if quick else 64, 16 if quick else 64)

def resnet():
    from gluoncv.model_zoo import get_model
    return get_model("resnet18_v1" if quick else "resnet50_v1", pretrained=False).features, (1, 3, size, size)

def timed(block, x):
    block(x).wait_to_read()
    start = time.perf_counter()
    for _ in range(repeats):
        block(x).wait_to_read()
    return (time.perf_counter() - start) / repeats * 1000

out = {"amx": lib.AMX}
for name, build in (("conv_stack", conv_stack), ("resnet", resnet)):
    net, shape = build()
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=shape)
    gmacs = conv_macs(net, x) / 1e9
    int8 = quantize_block(net, mx.nd.random.uniform(shape=(2,) + shape[1:]))
    hybridize_for_inference(net)
    fp32_ms, int8_ms = timed(net, x), timed(int8, x)
    out[name] = {"gmacs": gmacs, "fp32_ms": fp32_ms, "int8_ms": int8_ms}
print(json.dumps(out))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="ResNet-50 input side")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test, not a measurement)")
    return parser.parse_args(argv)


def run_setting(env_updates, args):
    env = {k: v for k, v in os.environ.items() if k not in ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")}
    env.update(env_updates)
    proc = subprocess.run([sys.executable, "-c", WORKER, str(args.size), str(args.repeats), str(int(args.quick))],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    default = run_setting({}, args)
    vnni = run_setting({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, args)
    print(f"import lib: AMX {default['amx']}; limited run: DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI (AMX {vnni['amx']})")
    print(f"{'model':<12} {'GMACs':>6}  {'fp32 ms':>8}  {'int8 VNNI ms':>12}  {'int8 default ms':>15}  "
          f"{'GMAC/s VNNI':>11}  {'GMAC/s default':>14}  {'VNNI / default':>14}")
    for name in ("conv_stack", "resnet"):
        d, v = default[name], vnni[name]
        print(f"{name:<12} {d['gmacs']:6.1f}  {d['fp32_ms']:8.1f}  {v['int8_ms']:12.1f}  {d['int8_ms']:15.1f}  "
              f"{v['gmacs'] / v['int8_ms'] * 1000:11.0f}  {d['gmacs'] / d['int8_ms'] * 1000:14.0f}  "
              f"{v['int8_ms'] / d['int8_ms']:13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
