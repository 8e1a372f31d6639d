"""Example events (`schemas/examples/<schema>.json`, Avro JSON encoding) for docs and tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from gdx.common.avro import SchemaCatalog
from gdx.common.columns import COLUMNS


def load_example(schema_dir: Path, catalog: SchemaCatalog, name: str) -> dict[str, Any]:
    text = (schema_dir / "examples" / f"{name}.json").read_text()
    line = json.dumps(json.loads(text), separators=(",", ":"))
    value: dict[str, Any] = next(iter(fastavro.json_reader(io.StringIO(line), catalog.writer(name).parsed)))  # type: ignore[arg-type]
    if COLUMNS in value and value[COLUMNS] is None:
        del value[COLUMNS]  # as the catalog decodes it: the records are in `records`
    return value


def dump_example(catalog: SchemaCatalog, name: str, value: dict[str, Any]) -> str:
    buf = io.StringIO()
    fastavro.json_writer(buf, catalog.writer(name).parsed, [value])
    return json.dumps(json.loads(buf.getvalue()), indent=2) + "\n"
