"""Backward compatibility of Avro schemas: can a reader with the new schema read the old one's data?"""

from __future__ import annotations

from typing import Any

_PROMOTIONS = {
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
}


def _type_name(s: Any) -> str:
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return "union"
    return str(s["type"]) if s["type"] in ("record", "enum", "fixed", "array", "map", "error") else _type_name(s["type"])


def _resolve(s: Any, named: dict[str, Any]) -> Any:
    """Follow named references and {"type": ...} wrappers to the schema itself."""
    while True:
        if isinstance(s, str) and s in named:
            s = named[s]
        elif isinstance(s, dict) and s.get("type") not in ("record", "enum", "fixed", "array", "map", "error"):
            s = s["type"]
        else:
            return s


def _collect(s: Any, named: dict[str, Any], ns: str | None = None) -> None:
    if isinstance(s, list):
        for b in s:
            _collect(b, named, ns)
    elif isinstance(s, dict):
        t = s.get("type")
        if t in ("record", "enum", "fixed", "error"):
            space = s.get("namespace", ns)
            full = s["name"] if "." in s["name"] or not space else f"{space}.{s['name']}"
            named[full] = s
            named.setdefault(s["name"], s)
            for f in s.get("fields", []):
                _collect(f["type"], named, space)
        elif t == "array":
            _collect(s["items"], named, ns)
        elif t == "map":
            _collect(s["values"], named, ns)
        elif isinstance(t, (dict, list)):
            _collect(t, named, ns)


def incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Reasons data written with `writer` cannot be read with `reader` (empty: compatible)."""
    rn: dict[str, Any] = {}
    wn: dict[str, Any] = {}
    _collect(reader, rn)
    _collect(writer, wn)
    problems: list[str] = []
    _check(reader, writer, rn, wn, "$", problems, set())
    return problems


def _check(r: Any, w: Any, rn: dict[str, Any], wn: dict[str, Any], path: str, out: list[str],
           seen: set[tuple[str, str]]) -> None:
    r, w = _resolve(r, rn), _resolve(w, wn)
    if isinstance(w, list):
        for branch in w:
            sub: list[str] = []
            _check(r, branch, rn, wn, path, sub, seen)
            out.extend(sub)
        return
    if isinstance(r, list):
        for branch in r:
            sub = []
            _check(branch, w, rn, wn, path, sub, seen)
            if not sub:
                return
        out.append(f"{path}: writer type {_type_name(w)} matches no branch of the reader's union")
        return
    rt, wt = _type_name(r), _type_name(w)
    if rt != wt:
        if (wt, rt) not in _PROMOTIONS:
            out.append(f"{path}: type changed from {wt} to {rt}")
        return
    if rt == "record":
        key = (r["name"], w["name"])
        if key in seen:
            return
        seen = seen | {key}
        wfields = {f["name"]: f for f in w["fields"]}
        for f in r["fields"]:
            wf = wfields.get(f["name"])
            if wf is None:
                for alias in f.get("aliases", []):
                    wf = wfields.get(alias)
            if wf is None:
                if "default" not in f:
                    out.append(f"{path}.{f['name']}: new field without a default")
                continue
            _check(f["type"], wf["type"], rn, wn, f"{path}.{f['name']}", out, seen)
    elif rt == "enum":
        missing = set(w["symbols"]) - set(r["symbols"])
        if missing and "default" not in r:
            out.append(f"{path}: enum symbols removed: {sorted(missing)}")
    elif rt == "array":
        _check(r["items"], w["items"], rn, wn, f"{path}[]", out, seen)
    elif rt == "map":
        _check(r["values"], w["values"], rn, wn, f"{path}{{}}", out, seen)
    elif rt == "fixed" and r.get("size") != w.get("size"):
        out.append(f"{path}: fixed size changed")
