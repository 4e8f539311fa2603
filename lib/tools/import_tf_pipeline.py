"""Map a TensorFlow Object Detection API ``pipeline.config`` onto this toolkit's yaml.

    python -m lib.tools.import_tf_pipeline pipeline.config --out experiments/custom/my.yaml

Only the basic fields are mapped (detector family, num_classes, input size, batch size, steps,
learning rate, augmentation options, record and label-map paths); everything else is listed as
"not mapped" so nothing is silently dropped. The protobuf text format is parsed without TensorFlow.
"""
import argparse
import re
import sys

import yaml

from lib.cli import user_errors_exit_2

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}:\[\],;<>])|([^\s{}:\[\],;<>"\']+))')


class PipelineParseError(ValueError):
    pass


def _tokens(text, path):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                return
            raise PipelineParseError(f"{path}:{line}: cannot parse near {text[pos:pos + 20]!r}")
        line_at = line + text.count("\n", pos, m.start(0) + len(m.group(0)) - len(m.group(0).lstrip()))
        pos_end = m.end()
        comment, string, punct, word = m.groups()
        line += text.count("\n", pos, pos_end)
        pos = pos_end
        if comment:
            continue
        if string is not None:
            yield ("str", bytes(string[1:-1], "utf-8").decode("unicode_escape"), line_at)
        elif punct is not None:
            yield ("punct", punct, line_at)
        elif word is not None:
            yield ("word", word, line_at)


def _scalar(kind, value):
    if kind == "str":
        return value
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value  # enum name


def parse_text_proto(text, path="<text>"):
    """Protobuf text format -> nested dict; repeated fields become lists."""
    tokens = list(_tokens(text, path))
    pos = 0

    def add(node, key, value):
        if key in node:
            if not isinstance(node[key], list) or not node.get("__repeated__" + key):
                node[key] = [node[key]]
                node["__repeated__" + key] = True
            node[key].append(value)
        else:
            node[key] = value

    def parse_message(closing):
        nonlocal pos
        node = {}
        while pos < len(tokens):
            kind, value, line = tokens[pos]
            if kind == "punct" and value == closing:
                pos += 1
                return node
            if kind != "word":
                raise PipelineParseError(f"{path}:{line}: expected a field name, got {value!r}")
            key = value
            pos += 1
            if pos >= len(tokens):
                raise PipelineParseError(f"{path}:{line}: field '{key}' has no value")
            kind, value, line = tokens[pos]
            if kind == "punct" and value == ":":
                pos += 1
                kind, value, line = tokens[pos]
            if kind == "punct" and value in "{<":
                pos += 1
                add(node, key, parse_message("}" if value == "{" else ">"))
            elif kind == "punct" and value == "[":
                pos += 1
                while not (tokens[pos][0] == "punct" and tokens[pos][1] == "]"):
                    if tokens[pos][1] != ",":
                        add(node, key, _scalar(tokens[pos][0], tokens[pos][1]))
                    pos += 1
                pos += 1
            elif kind in ("word", "str"):
                add(node, key, _scalar(kind, value))
                pos += 1
            else:
                raise PipelineParseError(f"{path}:{line}: unexpected {value!r} after field '{key}'")
            if pos < len(tokens) and tokens[pos][0] == "punct" and tokens[pos][1] in ",;":
                pos += 1
        if closing is not None:
            raise PipelineParseError(f"{path}: missing '{closing}' at end of file")
        return node

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("__repeated__")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(parse_message(None))


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _flatten(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


# TF OD augmentation option -> our lib.transforms spec
_AUGMENT = {
    "random_horizontal_flip": {"name": "RandomFlip"},
    "ssd_random_crop": {"name": "SSDRandomCrop"},
    "random_crop_image": {"name": "SSDRandomCrop"},
    "random_adjust_brightness": {"name": "PhotometricDistort"},
    "random_adjust_contrast": {"name": "PhotometricDistort"},
    "random_adjust_hue": {"name": "PhotometricDistort"},
    "random_adjust_saturation": {"name": "PhotometricDistort"},
    "random_distort_color": {"name": "PhotometricDistort"},
    "ssd_random_crop_pad": {"name": "Expand"},
    "random_pad_image": {"name": "Expand"},
}

_FAMILY = {"ssd": "ssdlite", "faster_rcnn": "rfcn", "rfcn": "rfcn"}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _learning_rate(optimizer):
    """First found initial/constant learning rate and the optimizer name."""
    for name, opt in optimizer.items():
        lr_node = opt.get("learning_rate", {}) if isinstance(opt, dict) else {}
        for schedule in lr_node.values():
            if isinstance(schedule, dict):
                for key in ("initial_learning_rate", "learning_rate_base", "learning_rate"):
                    if key in schedule:
                        return name.replace("_optimizer", ""), float(schedule[key]), schedule
                if "schedule" in schedule:
                    first = _as_list(schedule["schedule"])[0]
                    return name.replace("_optimizer", ""), float(first.get("learning_rate")), schedule
        return name.replace("_optimizer", ""), None, {}
    return None, None, {}


def map_pipeline(config):
    """pipeline dict -> (our yaml dict, list of 'field: reason' strings not mapped)."""
    used = set()
    out = {"DETECTOR": None, "NUM_CLASSES": None, "INPUT": {}, "TRAIN": {}, "DATA": {}}
    model = config.get("model", {})
    if len(model) != 1:
        raise PipelineParseError("pipeline.config: 'model' must hold exactly one meta-architecture")
    arch, body = next(iter(model.items()))
    out["DETECTOR"] = _FAMILY.get(arch, arch)
    extractor = body.get("feature_extractor", {})
    out["BACKBONE"] = extractor.get("type")
    used.update({f"model.{arch}.feature_extractor.type"})
    if "depth_multiplier" in extractor:
        out["WIDTH_MULTIPLIER"] = float(extractor["depth_multiplier"])
        used.add(f"model.{arch}.feature_extractor.depth_multiplier")
    out["NUM_CLASSES"] = int(body["num_classes"]) if "num_classes" in body else None
    used.add(f"model.{arch}.num_classes")
    resizer = body.get("image_resizer", {})
    if "fixed_shape_resizer" in resizer:
        r = resizer["fixed_shape_resizer"]
        out["INPUT"] = {"SIZE": [int(r.get("height", 300)), int(r.get("width", 300))]}
        used.update({f"model.{arch}.image_resizer.fixed_shape_resizer.height",
                     f"model.{arch}.image_resizer.fixed_shape_resizer.width"})
    elif "keep_aspect_ratio_resizer" in resizer:
        r = resizer["keep_aspect_ratio_resizer"]
        out["INPUT"] = {"SHORT_SIDE": int(r.get("min_dimension", 600)),
                        "MAX_SIZE": int(r.get("max_dimension", 1024))}
        used.update({f"model.{arch}.image_resizer.keep_aspect_ratio_resizer.min_dimension",
                     f"model.{arch}.image_resizer.keep_aspect_ratio_resizer.max_dimension"})
    train = config.get("train_config", {})
    for src, dst, cast in (("batch_size", "BATCH_SIZE", int), ("num_steps", "ITERATIONS", int)):
        if src in train:
            out["TRAIN"][dst] = cast(train[src])
            used.add(f"train_config.{src}")
    optimizer_name, lr, _ = _learning_rate(train.get("optimizer", {}))
    if optimizer_name:
        out["TRAIN"]["OPTIMIZER"] = {"rms_prop": "rmsprop", "momentum": "sgd", "adam": "adam"}.get(
            optimizer_name, optimizer_name)
    if lr is not None:
        out["TRAIN"]["LR"] = lr
        used.update(k for k, _ in _flatten(train.get("optimizer", {}), "train_config.optimizer")
                    if k.endswith(("initial_learning_rate", "learning_rate_base"))
                    or re.search(r"schedule(\[0\])?\.learning_rate$", k))
    augment, seen = [], set()
    for option in _as_list(train.get("data_augmentation_options", [])):
        for name in option:
            spec = _AUGMENT.get(name)
            # options' own parameters (max_delta, ...) stay in the unmapped list below
            if spec is not None:
                if spec["name"] not in seen:
                    augment.append(dict(spec))
                    seen.add(spec["name"])
    out["TRAIN"]["AUGMENT"] = augment
    for split, key in (("train_input_reader", "TRAIN"), ("eval_input_reader", "VAL")):
        for reader in _as_list(config.get(split, [])):
            if not isinstance(reader, dict):
                continue
            paths = _as_list(reader.get("tf_record_input_reader", {}).get("input_path", []))
            if paths:
                out["DATA"][key] = {"FORMAT": "tfrecord", "PATH": paths[0] if len(paths) == 1 else paths,
                                    "LABEL_MAP": reader.get("label_map_path")}
                used.update({f"{split}.tf_record_input_reader.input_path", f"{split}.label_map_path"})
            break
    unmapped = []
    for key, value in _flatten(config):
        bare = re.sub(r"\[\d+\]", "", key)
        if key in used or bare in used or any(key.startswith(u + ".") or key.startswith(u + "[") for u in used):
            continue
        if bare.startswith("train_config.data_augmentation_options") and any(
                bare.endswith(n) or f".{n}." in bare for n in _AUGMENT):
            unmapped.append(f"{key} = {value!r}: augmentation parameters are not mapped (our defaults apply)")
            continue
        unmapped.append(f"{key} = {value!r}")
    return out, unmapped


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="TF Object Detection API pipeline.config")
    parser.add_argument("--out", help="write the mapped yaml here (default: print it)")
    args = parser.parse_args(argv)
    try:
        with open(args.pipeline, "r", encoding="utf-8-sig") as f:
            config = parse_text_proto(f.read(), args.pipeline)
        mapped, unmapped = map_pipeline(config)
    except PipelineParseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(mapped, sort_keys=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"# mapped from {args.pipeline} by lib.tools.import_tf_pipeline\n")
            f.write(text)
            if unmapped:
                f.write("# not mapped:\n" + "".join(f"#   {u}\n" for u in unmapped))
        print(f"wrote {args.out}")
    else:
        print(text)
    print(f"{len(unmapped)} field(s) not mapped:" if unmapped else "every field was mapped",
          file=sys.stderr)
    for item in unmapped:
        print("  " + item, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
