"""Example events (`schemas/examples/<schema>.json`, Avro JSON encoding) for docs and tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from gdx.common.avro import SchemaCatalog


def load_example(schema_dir: Path, catalog: SchemaCatalog, name: str) -> dict[str, Any]:
    text = (schema_dir / "examples" / f"{name}.json").read_text()
    line = json.dumps(json.loads(text), separators=(",", ":"))
    return next(iter(fastavro.json_reader(io.StringIO(line), catalog.writer(name).parsed)))  # type: ignore[arg-type]


def dump_example(catalog: SchemaCatalog, name: str, value: dict[str, Any]) -> str:
    buf = io.StringIO()
    fastavro.json_writer(buf, catalog.writer(name).parsed, [value])
    return json.dumps(json.loads(buf.getvalue()), indent=2) + "\n"
