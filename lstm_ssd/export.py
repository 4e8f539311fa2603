"""Export each part of a detector separately as symbol + params (and load them back).

Files: ``<prefix>-<part>-symbol.json`` / ``<prefix>-<part>-0000.params`` for extractor_large,
extractor_small, lstm_step_large, lstm_step_small (or project for the frame baseline) and head, plus
``<prefix>-parts.json`` describing the inputs of each part and how to chain them, so a deployment can
run the two extractors independently (which the reference's single frozen graph did not allow):

    feats = extractor_<e>(frame (1,3,S,S) RGB 0..255)
    out, c_new, h_new = lstm_step_<e>(feats, c, h)          # keep (c, h) unchanged after small steps
    cls_logits, box_deltas = head(out)                       # decode with the anchors in parts.json

    python -m lstm_ssd.export --cfg CFG.yaml --model MODEL.params --output PREFIX
"""
import argparse
import json
import os

import mxnet as mx


def export_parts(net, prefix, ctx=mx.cpu()):
    """Write every part; returns {part: (symbol file, params file)}."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    h, w = net.image_hw
    frame = mx.nd.zeros((1, 3, h, w), ctx=ctx)
    state = net.zero_state(1, ctx)
    inputs = {}
    for part in net.parts().values():
        part.hybridize(False)
        part.hybridize()       # plain static graph: the portable artefact (MKLDNN fusion happens at load)
    for e in net.extractor_names:
        feats = net.extractor(e)(frame)
        inputs[f"extractor_{e}"] = [[1, 3, h, w]]
        if net.memory is not None:
            out, _, _ = net.memory.steps[e](feats, *state)
            inputs[f"lstm_step_{e}"] = [list(feats.shape), list(state[0].shape), list(state[1].shape)]
        else:
            out = net.project(feats)
            inputs["project"] = [list(feats.shape)]
    net.head(out)
    inputs["head"] = [list(out.shape)]
    files, described = {}, {}
    for name, part in net.parts().items():
        base = f"{prefix}-{name}"
        part.export(base, epoch=0)
        files[name] = (base + "-symbol.json", base + "-0000.params")
        sym = mx.sym.load(files[name][0])
        params = set(mx.nd.load(files[name][1]))
        names = [n for n in sym.list_inputs() if f"arg:{n}" not in params and f"aux:{n}" not in params]
        # Gluon names the inputs data0, data1, ... in call order; list_inputs() is topological
        names.sort(key=lambda n: int(n[4:]) if n[4:].isdigit() else -1)
        described[name] = {"symbol": os.path.basename(files[name][0]), "params": os.path.basename(files[name][1]),
                           "inputs": names, "input_shapes": inputs[name]}
    meta = {"model_type": net.type, "image_size": [h, w], "extractors": net.extractor_names,
            "writes_memory": {e: net.writes_memory[e] for e in net.extractor_names},
            "state_shape": list(net.state_shape) if net.memory is not None else None,
            "num_classes": net.num_classes, "box_stds": list(net.cfg.BOX_STDS),
            "input": "RGB 0..255 float32, NCHW, resized to image_size [H, W] (scaling to [-1, 1] is in the graph)",
            "anchors": net.anchors().tolist() if _has_anchors() else None,
            "parts": described}
    with open(f"{prefix}-parts.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return files


def _has_anchors():
    try:
        import lib.anchors  # noqa: F401
        return True
    except ImportError:
        return False


def load_parts(prefix, ctx=mx.cpu()):
    """{part: SymbolBlock} from the files written by export_parts."""
    path = f"{prefix}-parts.json"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: export with lstm_ssd.export first")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    folder = os.path.dirname(os.path.abspath(path))
    out = {}
    for name, d in meta["parts"].items():
        out[name] = mx.gluon.SymbolBlock.imports(os.path.join(folder, d["symbol"]), d["inputs"],
                                                 os.path.join(folder, d["params"]), ctx=ctx)
    return out


def main(argv=None):
    from . import config as lstm_config
    from .detector import load_model
    ap = argparse.ArgumentParser(description="Export each extractor, LSTM step and head separately")
    ap.add_argument("--cfg", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--output", required=True, help="file prefix, e.g. export/lfs")
    args = ap.parse_args(argv)
    net = load_model(lstm_config.load(args.cfg), args.model)
    for name, (sym, params) in export_parts(net, args.output).items():
        print(f"{name}: {sym} {params}")


if __name__ == "__main__":
    main()
