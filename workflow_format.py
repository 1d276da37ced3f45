"""ComfyUI's two workflow formats, read against node definitions.

API format (what `/prompt` executes): {"<id>": {"class_type", "inputs": {name: value | [src_id, out_index]}}}.
UI format (what the editor saves and the template browser shows): nodes with `widgets_values` in the order of the
node's widget inputs, and links [id, from_node, from_slot, to_node, to_slot, type]. Converting UI → API needs each
node's INPUT_TYPES to know which inputs are widgets and in what order; `api_to_ui` lays an API graph out for the
editor so every UI workflow here has an exact API twin.
"""
from __future__ import annotations

from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
UI_ONLY_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
_SEED_NAMES = ("seed", "noise_seed")


def _input_items(node_class) -> list[tuple[str, tuple]]:
    spec = node_class.INPUT_TYPES()
    return list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())


def is_widget(input_spec: tuple) -> bool:
    kind = input_spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _extra_widget(name: str, input_spec: tuple) -> str | None:
    """The editor's own value stored after this widget, if any: a seed's "fixed"/"randomize", an upload button's."""
    opts = input_spec[1] if len(input_spec) > 1 else {}
    if input_spec[0] == "INT" and (opts.get("control_after_generate") or name in _SEED_NAMES):
        return "fixed"
    if opts.get("image_upload"):
        return "image"
    return None


def widget_names(node_class) -> list[tuple[str, str | None]]:
    """(widget input name, the editor value stored after it or None) in the order of UI `widgets_values`. A video
    upload button's value comes after the last required widget (the editor adds that button last)."""
    items = [(name, _extra_widget(name, spec)) for name, spec in _input_items(node_class) if is_widget(spec)]
    required = node_class.INPUT_TYPES().get("required", {})
    if any(len(spec) > 1 and spec[1].get("video_upload") for spec in required.values()):
        last = max(i for i, (name, _) in enumerate(items) if name in required)
        items[last] = (items[last][0], "image")
    return items


def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def ui_to_api(ui: dict, node_classes: dict) -> dict:
    """The API prompt a UI workflow stands for (UI-only nodes such as notes and muted nodes are left out)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in UI_ONLY_NODES or node.get("mode", 0) in (2, 4):
            continue
        if node["type"] not in node_classes:
            raise KeyError(f"node {node['id']} is of unknown type {node['type']!r}")
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        for name, extra in widget_names(node_classes[node["type"]]):
            if values:
                inputs[name] = values.pop(0)
            if extra and values:
                values.pop(0)  # the editor's own value ("fixed", "randomize", "image"), not the node's
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def api_to_ui(prompt: dict, node_classes: dict, notes: list[str] = (), column_width: int = 380) -> dict:
    """A UI workflow equal to `prompt`, nodes laid out in columns by graph depth, with optional note nodes."""
    depth: dict[str, int] = {}

    def node_depth(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((node_depth(s) for s in sources), default=-1)
        return depth[node_id]

    nodes, links, rows = [], [], {}
    outgoing: dict[tuple[str, int], list[int]] = {}
    for node_id, entry in prompt.items():
        for name, value in entry["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                src_class = node_classes[prompt[value[0]]["class_type"]]
                links.append([link_id, int(value[0]), value[1], int(node_id), name, src_class.RETURN_TYPES[value[1]]])
                outgoing.setdefault((value[0], value[1]), []).append(link_id)
    for node_id, entry in sorted(prompt.items(), key=lambda kv: (node_depth(kv[0]), int(kv[0]))):
        cls = node_classes[entry["class_type"]]
        col = node_depth(node_id)
        row = rows.get(col, 0)
        inputs, widgets = [], []
        extras = dict(widget_names(cls))
        for name, spec in _input_items(cls):
            value = entry["inputs"].get(name)
            linked = isinstance(value, list)
            if is_widget(spec):
                widgets.append(_default(spec) if linked or value is None else value)
                if extras.get(name):
                    widgets.append(extras[name])
            if linked or not is_widget(spec):
                slot = {"name": name, "type": _socket_type(spec), "link": None}
                if linked:
                    slot["link"] = next(link[0] for link in links if link[3] == int(node_id) and link[4] == name)
                    if is_widget(spec):
                        slot["widget"] = {"name": name}
                inputs.append(slot)
        outputs = [{"name": (getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)[i], "type": t,
                    "links": outgoing.get((node_id, i), []), "slot_index": i} for i, t in enumerate(cls.RETURN_TYPES)]
        node = {"id": int(node_id), "type": entry["class_type"], "pos": [40 + col * column_width, 40 + row],
                "size": [340, _height(cls, len(inputs) + len(widgets))], "flags": {}, "order": len(nodes), "mode": 0,
                "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": entry["class_type"]},
                "widgets_values": widgets}
        if "_meta" in entry:
            node["title"] = entry["_meta"]["title"]
        rows[col] = row + node["size"][1] + 40
        nodes.append(node)
    for i, text in enumerate(notes):
        nodes.append({"id": 1000 + i, "type": "Note", "pos": [40, -260 - 200 * i], "size": [720, 180], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [text], "color": "#432", "bgcolor": "#653"})
    for link in links:  # the link's target slot is an index into the target node's inputs
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = next(i for i, s in enumerate(target["inputs"]) if s["name"] == link[4])
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _height(node_class, rows: int) -> int:
    """Room for every row, plus text boxes for multiline strings and a preview under an image upload."""
    extra = 0
    for _, spec in _input_items(node_class):
        opts = spec[1] if len(spec) > 1 else {}
        extra += 110 * bool(opts.get("multiline")) + 220 * bool(opts.get("image_upload") or opts.get("video_upload"))
    return 60 + 26 * rows + extra


def _socket_type(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def _default(spec: tuple):
    opts = spec[1] if len(spec) > 1 else {}
    if "default" in opts:
        return opts["default"]
    return spec[0][0] if isinstance(spec[0], (list, tuple)) and spec[0] else None
