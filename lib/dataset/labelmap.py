"""Label maps: TF Object Detection API ``label_map.pbtxt`` and keras-retinanet classes CSV (``name,id``).

Our classes are 0-based without background. A TF OD label map numbers classes from 1 (0 is reserved
for background): class ``k`` of our list is ``id k + 1`` in the label map when written by us; when read,
items are sorted by id and each gets the next 0-based index.
"""
import csv
import os
import re

from .errors import DatasetError

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|(\{)|(\})|(:)|'
                    r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|(-?[0-9][0-9.eE+-]*))')


def _tokens(text, path):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                return
            raise DatasetError(f"{path}:{line}: cannot parse label map near {text[pos:pos + 20]!r}")
        line += text.count("\n", pos, m.end())
        pos = m.end()
        comment, ident, lbrace, rbrace, colon, string, number = m.groups()
        if comment:
            continue
        if ident:
            yield "ident", ident, line
        elif lbrace:
            yield "{", lbrace, line
        elif rbrace:
            yield "}", rbrace, line
        elif colon:
            yield ":", colon, line
        elif string:
            yield "value", string[1:-1].encode().decode("unicode_escape"), line
        elif number:
            yield "value", number, line


def parse_label_map(text, path="<label_map>"):
    """Parse pbtxt text into a list of item dicts (keys as written: id, name, display_name, ...)."""
    items, current, stack_line = [], None, None
    toks = list(_tokens(text, path))
    i = 0
    while i < len(toks):
        kind, value, line = toks[i]
        if current is None:
            if kind == "ident" and value == "item" and i + 1 < len(toks) and toks[i + 1][0] == "{":
                current, stack_line = {"_line": line}, line
                i += 2
                continue
            raise DatasetError(f"{path}:{line}: expected 'item {{', got {value!r}")
        if kind == "}":
            items.append(current)
            current = None
            i += 1
            continue
        if kind == "ident" and i + 2 < len(toks) and toks[i + 1][0] == ":" and toks[i + 2][0] == "value":
            current[value] = toks[i + 2][1]
            i += 3
            continue
        if kind == "ident" and i + 1 < len(toks) and toks[i + 1][0] == "{":
            # nested message (e.g. keypoints): skip it with its braces
            depth, i = 1, i + 2
            while i < len(toks) and depth:
                depth += {"{": 1, "}": -1}.get(toks[i][0], 0)
                i += 1
            continue
        raise DatasetError(f"{path}:{line}: unexpected {value!r} in item")
    if current is not None:
        raise DatasetError(f"{path}:{stack_line}: item is not closed with '}}'")
    return items


def read_label_map(path):
    """Read a TF OD label map. Returns [{"id": int, "name": str, "display_name": str}] sorted by id.
    Errors name the file and line: missing id/name, non-integer id, id < 1, duplicate id or name."""
    with open(path, "r", encoding="utf-8-sig") as f:
        items = parse_label_map(f.read(), path)
    out, seen_ids, seen_names = [], {}, {}
    for item in items:
        line = item["_line"]
        if "id" not in item or "name" not in item and "display_name" not in item:
            raise DatasetError(f"{path}:{line}: item needs an id and a name")
        try:
            cid = int(item["id"])
        except ValueError:
            raise DatasetError(f"{path}:{line}: id {item['id']!r} is not an integer") from None
        if cid < 1:
            raise DatasetError(f"{path}:{line}: id {cid} < 1 (0 is reserved for background)")
        name = item.get("name", item.get("display_name"))
        if cid in seen_ids:
            raise DatasetError(f"{path}:{line}: duplicate id {cid} (first at line {seen_ids[cid]})")
        if name in seen_names:
            raise DatasetError(f"{path}:{line}: duplicate name {name!r} (first at line {seen_names[name]})")
        seen_ids[cid], seen_names[name] = line, line
        out.append({"id": cid, "name": name, "display_name": item.get("display_name", name)})
    out.sort(key=lambda d: d["id"])
    return out


def label_map_classes(path):
    """Class names (0-based order = ascending label-map id)."""
    return [item["name"] for item in read_label_map(path)]


def write_label_map(path, classes, display_names=None):
    """Write classes as a TF OD label map with ids 1..C."""
    lines = []
    for k, name in enumerate(classes):
        lines += ["item {", f"  id: {k + 1}", f"  name: '{_escape(name)}'"]
        if display_names is not None:
            lines.append(f"  display_name: '{_escape(display_names[k])}'")
        lines.append("}")
    _write_text(path, "\n".join(lines) + "\n")


def _escape(s):
    return s.replace("\\", "\\\\").replace("'", "\\'")


def read_classes_csv(path):
    """keras-retinanet classes file: ``name,id`` per line, ids 0..C-1. Returns names ordered by id.
    Errors name the line: wrong field count, non-integer id, duplicate name or id, ids not 0..C-1."""
    by_id, names = {}, {}
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DatasetError(f"{path}:{line_no}: expected 'class_name,class_id', got {','.join(row)!r}")
            name, cid = row[0].strip(), row[1].strip()
            try:
                cid = int(cid)
            except ValueError:
                raise DatasetError(f"{path}:{line_no}: class id {cid!r} is not an integer") from None
            if name in names:
                raise DatasetError(f"{path}:{line_no}: duplicate class name {name!r} "
                                   f"(first at line {names[name]})")
            if cid in by_id:
                raise DatasetError(f"{path}:{line_no}: duplicate class id {cid}")
            names[name], by_id[cid] = line_no, name
    if sorted(by_id) != list(range(len(by_id))):
        raise DatasetError(f"{path}: class ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]


def write_classes_csv(path, classes):
    _write_text(path, "".join(f"{name},{k}\n" for k, name in enumerate(classes)))


def load_classes_file(path):
    """Classes from a label_map.pbtxt, a classes CSV (name,id) or a text file with one name per line."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: classes file not found")
    if path.endswith(".pbtxt"):
        return label_map_classes(path)
    with open(path, "r", encoding="utf-8-sig") as f:
        first = next((ln for ln in f if ln.strip()), "")
    if "," in first:
        return read_classes_csv(path)
    with open(path, "r", encoding="utf-8-sig") as f:
        names = [ln.strip() for ln in f if ln.strip()]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DatasetError(f"{path}: duplicate class names {sorted(dup)}")
    return names


def _write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
