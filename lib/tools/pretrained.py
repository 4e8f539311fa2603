"""See, convert and check pretrained backbone weights (docs/pretrained.md).

  python -m lib.tools.pretrained list
  python -m lib.tools.pretrained convert SOURCE --arch ARCH --out FILE.params
  python -m lib.tools.pretrained classify NAME IMAGE [--box X1,Y1,X2,Y2] [--top K]

SOURCE / NAME: a known name (efficientnet_lite0:imagenet, vgg16_hed:bsds500), gluoncv:<model name>
(from $MXNET_HOME/models, never downloaded) or a file (.params, .pth / .pt, HED .h5). ``classify``
prints the ImageNet top-K of the image (or of the box in it), ``name probability`` per line, best
first: the quickest check that a conversion is right. Errors: one line, exit status 2.
"""
import argparse
import sys

import cv2
import mxnet as mx
import numpy as np
from gluoncv.data.imagenet.classification import ImageNet1kAttr
from gluoncv.model_zoo import get_model

import lib.pretrained as pretrained
from lib.backbones import EfficientNetLite
from lib.cli import user_errors_exit_2
from lib.dataset import read_image
from lib.dataset.io import DatasetError

RESIZE_SHORT_SIDE = 256     # standard ImageNet evaluation: shorter side 256, centre crop 224
CROP_SIZE = 224


def imagenet_input(rgb, box=None, norm=None):
    """RGB uint8 HxWx3 [box crop] -> (1,3,224,224) float32 normalised as ``norm`` (ImageNet's default)."""
    if box is not None:
        x1, y1, x2, y2 = box
        h, w = rgb.shape[:2]
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ValueError(f"--box {x1},{y1},{x2},{y2} is not inside the {w}x{h} image "
                             "(x1 < x2 <= width, y1 < y2 <= height)")
        rgb = rgb[y1:y2, x1:x2]
    scale = RESIZE_SHORT_SIDE / min(rgb.shape[:2])
    size = (max(CROP_SIZE, round(rgb.shape[1] * scale)), max(CROP_SIZE, round(rgb.shape[0] * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - CROP_SIZE) // 2, (resized.shape[1] - CROP_SIZE) // 2
    crop = resized[top:top + CROP_SIZE, left:left + CROP_SIZE].astype(np.float32)
    norm = norm or {"mean": pretrained.IMAGENET_MEAN, "std": pretrained.IMAGENET_STD}
    crop = (crop - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return mx.nd.array(crop.transpose(2, 0, 1)[None])


def imagenet_classifier(spec, padding="symmetric"):
    """(block mapping an image batch to 1000 logits, its input normalisation) for a source."""
    if spec.startswith(pretrained.GLUONCV_PREFIX):
        name = spec[len(pretrained.GLUONCV_PREFIX):]
        path = pretrained.resolve(spec)
        try:
            net = get_model(name, pretrained=False)
        except ValueError as exc:
            raise pretrained.PretrainedError(f"{spec}: gluoncv cannot build it ({exc})") from None
        net.load_parameters(path, ignore_extra=True)
        return net, pretrained.input_normalization(spec)
    source = pretrained.SOURCES.get(spec)
    if source is not None and source.arch != "efficientnet_lite0":
        raise pretrained.PretrainedError(f"{spec} holds a {source.arch} trunk without an ImageNet classifier")
    net = EfficientNetLite(taps=(), classifier=True, padding=padding)
    net.initialize()
    pretrained.load_into(net, spec, "efficientnet_lite0", base_dir=".")
    net.hybridize()
    return net, pretrained.input_normalization(spec, base_dir=".") or {
        "mean": pretrained.IMAGENET_MEAN, "std": pretrained.IMAGENET_STD}


def classify(spec, image_path, box=None, top=5, padding="symmetric"):
    """-> [(class name, probability)] best first."""
    rgb = read_image(image_path)
    net, norm = imagenet_classifier(spec, padding)
    batch = imagenet_input(rgb, box, norm)
    prob = mx.nd.softmax(net(batch)).asnumpy()[0]
    names = ImageNet1kAttr().classes
    if prob.shape != (len(names),):
        raise pretrained.PretrainedError(f"{spec}: gives {prob.shape[0]} outputs, not the 1000 ImageNet classes")
    return [(names[i], float(prob[i])) for i in np.argsort(-prob)[:top]]


def _box(text):
    try:
        values = [int(round(float(v))) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give X1,Y1,X2,Y2 in pixels")
    return values


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.pretrained", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="known weights, where each comes from, cached or not")
    conv = sub.add_parser("convert", help="convert weights to a .params file (+ .json record)")
    conv.add_argument("source")
    conv.add_argument("--arch", choices=sorted(pretrained.ARCHS),
                      help="architecture to convert for (default: the known source's own)")
    conv.add_argument("--out", required=True, help="output .params file")
    cls = sub.add_parser("classify", help="ImageNet top-K of an image with converted weights")
    cls.add_argument("name")
    cls.add_argument("image")
    cls.add_argument("--box", type=_box, help="X1,Y1,X2,Y2: classify this region (pixels, x2/y2 exclusive)")
    cls.add_argument("--top", type=_positive, default=5)
    cls.add_argument("--padding", choices=("symmetric", "same"), default="symmetric",
                     help="EfficientNet padding: symmetric (the detectors') or same (exactly TF's)")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for row in pretrained.known_sources():
                print(f"{row['name']:<30} {row['arch']:<20} {row['state']}")
                print(f"{'':<30} from {row['origin']}; licence: {row['licence']}")
            print(f"cache: {pretrained.cache_dir()} (${pretrained.CACHE_ENV} overrides)")
        elif args.command == "convert":
            if not args.out.endswith(".params"):
                raise pretrained.PretrainedError(f"--out {args.out}: give a .params file name")
            record = pretrained.convert(args.source, args.out, args.arch, base_dir=".")
            print(f"wrote {args.out}: {record['arch']}, {record['parameters']} parameters, from {record['source']} "
                  f"(sha256 {record['sha256'][:16]}...)")
        else:
            for name, prob in classify(args.name, args.image, args.box, args.top, args.padding):
                print(f"{name} {prob:.4f}")
    except (pretrained.PretrainedError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
