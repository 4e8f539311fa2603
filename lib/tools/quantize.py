"""int8 quantization of an exported CPU detector with MXNet's MKLDNN (oneDNN) quantization.

    python -m lib.tools.quantize --model DIR --calib FRAMES_OR_VIDEO --out DIR_INT8
                                 [--num-calib 16] [--calib-mode naive|entropy]

Convolutions and fully-connected layers run in int8, calibrated on a few frames that go through
the artifact's own pre-processing; the detection post-processing (decode, NMS) stays in float.
The result is a normal exported artifact (same meta.json) that ``lib.tools.infer`` runs.
"""
import argparse
import json
import os
import shutil
import sys
import warnings

import numpy as np


def calibration_batches(detector, source, num):
    """Pre-processed calibration inputs (num,3,H,W), all at the first frame's input shape."""
    import cv2
    from lib.tools.infer import iterate_frames
    batches, shape = [], None
    for _, frame in iterate_frames(source):
        data, _ = detector.preprocess(frame)
        if shape is None:
            shape = data.shape
        elif data.shape != shape:
            # keep-ratio artifacts: frames of another size are resized to the first frame's input size
            resized = cv2.resize(frame, (shape[3], shape[2]))
            data, _ = detector.preprocess(resized)
            data = data[:, :, :shape[2], :shape[3]]
        batches.append(data)
        if len(batches) >= num:
            break
    if not batches:
        raise SystemExit(f"error: {source}: no calibration frames")
    return np.concatenate(batches)


def quantize(model_dir, calib_source, out_dir, num_calib=16, calib_mode="naive", exclude=()):
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net
    from lib.tools.infer import ExportedDetector
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        raise SystemExit("error: this mxnet build has no MKLDNN (oneDNN): int8 CPU quantization needs it")
    detector = ExportedDetector(model_dir, "mxnet")
    calib = calibration_batches(detector, calib_source, num_calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock.imports(os.path.join(model_dir, "model-symbol.json"), ["data"],
                                           os.path.join(model_dir, "model-0000.params"))
    # a DataIter (not a DataLoader): quantize_net then feeds `data` alone to the network
    data_iter = mx.io.NDArrayIter(data=mx.nd.array(calib), batch_size=1, data_name="data")
    qnet = quantize_net(net, quantized_dtype="auto", calib_data=data_iter, calib_mode=calib_mode,
                        num_calib_examples=len(calib), exclude_layers=list(exclude) or None, ctx=mx.cpu())
    qnet(mx.nd.array(calib[:1]))  # the quantized graph is only materialised (and exportable) after a forward
    os.makedirs(out_dir, exist_ok=True)
    qnet.export(os.path.join(out_dir, "model"))
    meta = dict(detector.meta)
    meta["quantized"] = {"dtype": "int8", "calib_mode": calib_mode, "num_calib": int(len(calib)),
                         "source": os.path.abspath(model_dir)}
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="int8-quantize an exported detector (CPU, MKLDNN).")
    parser.add_argument("--model", required=True, help="exported fp32 artifact folder")
    parser.add_argument("--calib", required=True, help="video or folder of frames for calibration")
    parser.add_argument("--out", required=True, help="output artifact folder")
    parser.add_argument("--num-calib", type=int, default=16)
    parser.add_argument("--calib-mode", choices=["naive", "entropy"], default="naive")
    parser.add_argument("--exclude", nargs="*", default=[], help="layer names to keep in float")
    args = parser.parse_args(argv)
    if os.path.abspath(args.out) == os.path.abspath(args.model):
        raise SystemExit("error: --out must differ from --model (the fp32 artifact is kept)")
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    quantize(args.model, args.calib, args.out, args.num_calib, args.calib_mode, args.exclude)
    print(f"wrote int8 artifact {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
