"""Dataset arguments of the toolkit commands (keras-retinanet style sub-commands) -> lib.dataset.

    csv ANNOTATIONS CLASSES [--val-annotations CSV]
    pascal VOC_ROOT [--train-split trainval] [--val-split test]
    coco COCO_ROOT [--train-set train2017] [--val-set val2017]
    kitti KITTI_ROOT [--train-split FILE] [--val-split FILE]
    oid MAIN_DIR [--version v4] [--labels-filter A,B] [--parent-label NAME] [--hierarchy JSON]
"""
import json
import os

from lib.dataset.coco import load_coco
from lib.dataset.csv_format import load_csv
from lib.dataset.io import DatasetError
from lib.dataset.kitti import load_kitti
from lib.dataset.labelmap import read_classes_csv
from lib.dataset.oid import load_oid, read_oid_descriptions
from lib.dataset.voc import load_voc

FORMATS = ("csv", "pascal", "coco", "kitti", "oid")


def add_dataset_subparsers(parser, for_training=True):
    """Add one sub-command per dataset format; ``args.dataset_type`` names the one chosen."""
    sub = parser.add_subparsers(dest="dataset_type", metavar="{csv,pascal,coco,kitti,oid}",
                                help="dataset format")
    sub.required = True
    parser.set_defaults(for_training=for_training)
    classes_help = ("class names in model order: a comma-separated list or a classes file "
                    "(label_map.pbtxt, name,id CSV, one name per line); default: the format's own")
    csv_p = sub.add_parser("csv", help="keras-retinanet CSV (path,x1,y1,x2,y2,class_name)")
    csv_p.add_argument("annotations", help="CSV with the annotations (training set for m2det-train)")
    csv_p.add_argument("classes", help="CSV mapping class names to ids (class_name,id from 0)")
    if for_training:
        csv_p.add_argument("--val-annotations", help="CSV with the validation annotations")
    pascal = sub.add_parser("pascal", help="Pascal VOC folder")
    pascal.add_argument("pascal_path", help="VOC root (Annotations/, JPEGImages/, ImageSets/Main/)")
    pascal.add_argument("--train-split", default="trainval")
    pascal.add_argument("--val-split", default="test")
    pascal.add_argument("--classes", help=classes_help)
    coco = sub.add_parser("coco", help="COCO folder (annotations/instances_<set>.json, images/<set>/)")
    coco.add_argument("coco_path")
    coco.add_argument("--train-set", default="train2017")
    coco.add_argument("--val-set", default="val2017")
    coco.add_argument("--classes", help=classes_help)
    kitti = sub.add_parser("kitti", help="KITTI folder (label_2/, image_2/)")
    kitti.add_argument("kitti_path")
    kitti.add_argument("--train-split", default=None, help="list file of training image ids")
    kitti.add_argument("--val-split", default=None,
                       help="list file of validation image ids (m2det-evaluate / m2det-debug: "
                            "default every label file)")
    kitti.add_argument("--classes", help=classes_help)
    oid = sub.add_parser("oid", help="Open Images folder")
    oid.add_argument("main_dir")
    oid.add_argument("--version", default="v4")
    oid.add_argument("--labels-filter", default=None, help="comma-separated display names to keep")
    oid.add_argument("--parent-label", default=None,
                     help="keep only the classes under this display name in the class hierarchy")
    oid.add_argument("--hierarchy", default=None,
                     help="class hierarchy JSON (default MAIN_DIR/<version>/bbox_labels_600_hierarchy.json)")
    oid.add_argument("--train-set", default="train")
    oid.add_argument("--val-set", default="validation")
    return sub


def oid_labels_under(hierarchy_path, descriptions, parent_display_name):
    """Display names of every class below ``parent_display_name`` in an OID hierarchy JSON."""
    names = read_oid_descriptions(descriptions)
    by_name = {v: k for k, v in names.items()}
    if parent_display_name not in by_name:
        raise DatasetError(f"{descriptions}: parent label {parent_display_name!r} is not a class name")
    try:
        with open(hierarchy_path, "r", encoding="utf-8-sig") as f:
            tree = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{hierarchy_path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    target = by_name[parent_display_name]

    def find(node):
        if node.get("LabelName") == target:
            return node
        for child in node.get("Subcategory", []):
            hit = find(child)
            if hit is not None:
                return hit
        return None

    def collect(node, out):
        for child in node.get("Subcategory", []):
            if child["LabelName"] in names and names[child["LabelName"]] not in out:
                out.append(names[child["LabelName"]])
            collect(child, out)
        return out

    node = find(tree)
    if node is None:
        raise DatasetError(f"{hierarchy_path}: label {parent_display_name!r} ({target}) is not in the hierarchy")
    labels = collect(node, [])
    if not labels:
        raise DatasetError(f"{hierarchy_path}: label {parent_display_name!r} has no sub-classes")
    return labels


def split_source(args, split):
    """The dataset a split was read from, as the command line named it (for messages): e.g.
    'csv /data/ann.csv'."""
    kind = args.dataset_type
    path = {"csv": lambda: args.annotations if split == "train" or not args.for_training else args.val_annotations,
            "pascal": lambda: args.pascal_path, "coco": lambda: args.coco_path, "kitti": lambda: args.kitti_path,
            "oid": lambda: args.main_dir}.get(kind, lambda: "")()
    return f"{kind} {path}".strip()


def _classes(value):
    if not value:
        return None
    if os.path.isfile(value):
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def load_split(args, split, strict=False):
    """The training ('train') or validation ('val') DetectionDataset named by the sub-command
    arguments, or None when that split was not given (csv without --val-annotations)."""
    kind = args.dataset_type
    if kind == "csv":
        classes = read_classes_csv(args.classes)
        if split == "train" or not args.for_training:
            path = args.annotations  # m2det-evaluate / m2det-debug: the one CSV given
        else:
            path = args.val_annotations
        if not path:
            return None
        return load_csv(path, classes=classes, strict=strict)
    if kind == "pascal":
        return load_voc(args.pascal_path, split=args.train_split if split == "train" else args.val_split,
                        classes=_classes(args.classes), strict=strict)
    if kind == "coco":
        name = args.train_set if split == "train" else args.val_set
        ann = os.path.join(args.coco_path, "annotations", f"instances_{name}.json")
        images = os.path.join(args.coco_path, "images", name)
        return load_coco(ann, images_dir=images if os.path.isdir(images) else None,
                         classes=_classes(args.classes), strict=strict)
    if kind == "kitti":
        list_file = args.train_split if split == "train" else args.val_split
        if split == "val" and not list_file and args.for_training:
            return None
        return load_kitti(args.kitti_path, split=list_file, classes=_classes(args.classes), strict=strict)
    if kind == "oid":
        root = os.path.join(args.main_dir, args.version) if os.path.isdir(
            os.path.join(args.main_dir, args.version)) else args.main_dir
        set_name = args.train_set if split == "train" else args.val_set
        descriptions = os.path.join(root, "class-descriptions-boxable.csv")
        if not os.path.isfile(descriptions):
            descriptions = os.path.join(root, "class-descriptions.csv")
        annotations = os.path.join(root, set_name, f"{set_name}-annotations-bbox.csv")
        if not os.path.isfile(annotations):
            annotations = os.path.join(root, f"{set_name}-annotations-bbox.csv")
        if split == "val" and not os.path.isfile(annotations):
            return None
        labels = [s.strip() for s in args.labels_filter.split(",")] if args.labels_filter else None
        if args.parent_label:
            hierarchy = args.hierarchy or os.path.join(root, "bbox_labels_600_hierarchy.json")
            under = oid_labels_under(hierarchy, descriptions, args.parent_label)
            labels = [n for n in under if labels is None or n in labels]
        images = os.path.join(args.main_dir, "images", set_name)
        return load_oid(annotations, descriptions, images, labels_filter=labels, strict=strict)
    raise ValueError(f"unknown dataset type {kind!r}; choose one of {FORMATS}")
