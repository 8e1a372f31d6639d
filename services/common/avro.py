"""The wire format, stated once: Avro single-object encoding of gdx's named schemas.

A value on every gdx topic is `C3 01` + the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form + the Avro binary body. The writer schemas are published on
`gdx.schemas` keyed by the fingerprint (hex), so a consumer needs nothing of this repository.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from gdx.common.columns import COLUMNS, from_columns, to_columns
from gdx.common.errors import PermanentError

MAGIC = b"\xc3\x01"
HEADER_LEN = 10


class UnknownSchemaError(PermanentError):
    reason_code = "unknown-schema"


class DecodeError(PermanentError):
    reason_code = "decode"


class EncodeError(PermanentError):
    reason_code = "encode"


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """8-byte CRC-64-AVRO fingerprint, little-endian as single-object encoding writes it."""
    canonical = to_parsing_canonical_form(schema)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))[::-1]


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _expand(schema: dict[str, Any], named: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A self-contained copy of `schema`: each referenced named type defined at its first use."""
    seen: set[str] = set()

    def full(name: str, ns: str | None) -> str:
        return name if "." in name or not ns else f"{ns}.{name}"

    def walk(node: Any, ns: str | None) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            fname = full(node, ns)
            if fname in seen:
                return fname
            if fname not in named:
                raise ValueError(f"unknown type {fname}")
            return walk(named[fname], ns)
        if isinstance(node, list):
            return [walk(n, ns) for n in node]
        if isinstance(node, dict):
            typ = node.get("type")
            if typ in ("record", "enum", "fixed", "error"):
                node_ns = node.get("namespace", ns)
                fname = full(node["name"], node_ns)
                seen.add(fname)
                out = dict(node)
                out["name"], out["namespace"] = fname.rsplit(".", 1)[-1], fname.rsplit(".", 1)[0]
                if typ in ("record", "error"):
                    out["fields"] = [{**f, "type": walk(f["type"], node_ns)} for f in node["fields"]]
                return out
            if typ == "array":
                return {**node, "items": walk(node["items"], ns)}
            if typ == "map":
                return {**node, "values": walk(node["values"], ns)}
            return {**node, "type": walk(typ, ns)}
        raise ValueError(f"not an Avro schema: {node!r}")

    return walk(schema, schema.get("namespace"))


def split_header(data: bytes) -> tuple[bytes, memoryview]:
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
    return bytes(data[2:HEADER_LEN]), memoryview(data)[HEADER_LEN:]


@dataclass(frozen=True)
class WriterSchema:
    name: str
    schema: dict[str, Any]  # self-contained (named types expanded)
    parsed: Any
    fingerprint: bytes
    reader: Any = None  # for a released older version: the current schema, which reads its data

    @cached_property
    def columnar(self) -> bool:
        """A variant batch schema: its records may travel by column (gdx.common.columns)."""
        return any(f["name"] == COLUMNS for f in self.schema.get("fields", ()))

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def json(self) -> str:
        return json.dumps(self.schema, separators=(",", ":"), sort_keys=True)


class SchemaCatalog:
    """gdx's Avro schemas, parsed once: encode by name, decode by fingerprint."""

    def __init__(self, schemas: dict[str, dict[str, Any]]):
        self._by_name: dict[str, WriterSchema] = {}
        self._by_fp: dict[bytes, WriterSchema] = {}
        for name in schemas:
            self.add(name, _expand(schemas[name], schemas))

    def add(self, name: str, schema: dict[str, Any]) -> WriterSchema:
        parsed = fastavro.parse_schema(schema)
        ws = WriterSchema(name, schema, parsed, schema_fingerprint(schema))
        self._by_name[name] = ws
        self._by_fp[ws.fingerprint] = ws
        return ws

    @classmethod
    def load(cls, schema_dir: Path) -> SchemaCatalog:
        avro_dir = schema_dir / "avro" if (schema_dir / "avro").is_dir() else schema_dir
        schemas = {}
        for path in sorted(avro_dir.glob("*.avsc")):
            data = json.loads(path.read_text())
            name = f"{data['namespace']}.{data['name']}" if "namespace" in data else data["name"]
            if path.name != f"{name}.avsc":
                raise ValueError(f"{path.name}: file must be named after its schema's full name {name}.avsc")
            schemas[name] = data
        catalog = cls(schemas)
        catalog._add_released(schema_dir / "released")
        return catalog

    def _add_released(self, released: Path) -> None:
        """Decode data written with an older released version (schemas/released/v<N>) as the current schema."""
        for version in sorted(released.glob("v*")) if released.is_dir() else []:
            old = SchemaCatalog.load(version)
            for name in old.names:
                ws, current = old.writer(name), self._by_name.get(name)
                if current is not None and ws.fingerprint not in self._by_fp:
                    self._by_fp[ws.fingerprint] = WriterSchema(name, ws.schema, ws.parsed, ws.fingerprint,
                                                               current.parsed)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def writer(self, name: str) -> WriterSchema:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(f"no schema named {name!r}") from None

    def by_fingerprint(self, fp: bytes) -> WriterSchema | None:
        return self._by_fp.get(fp)

    def learn(self, schema_json: str) -> WriterSchema:
        """Add a writer schema seen on gdx.schemas (a consumer that has none of this repo)."""
        schema = json.loads(schema_json)
        name = f"{schema.get('namespace')}.{schema['name']}" if schema.get("namespace") else schema["name"]
        ws = WriterSchema(name, schema, fastavro.parse_schema(schema), schema_fingerprint(schema))
        self._by_fp.setdefault(ws.fingerprint, ws)
        self._by_name.setdefault(name, ws)
        return ws

    def encode(self, name: str, value: dict[str, Any]) -> bytes:
        ws = self.writer(name)
        if ws.columnar and value.get("records") and value.get(COLUMNS) is None:
            columns = to_columns(value["records"])
            if columns is not None:
                value = {**value, "records": [], COLUMNS: columns}
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(ws.fingerprint)
        try:
            fastavro.schemaless_writer(buf, ws.parsed, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"value does not fit schema {name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes, columns: bool = False) -> tuple[str, dict[str, Any]]:
        """The schema name and value of an encoded event. A variant batch's records come back as
        record dicts, or with `columns` as they travelled: `records` empty and the VariantColumns
        value under `columns` (a handler that passes the rows through untouched skips building a
        dict per record; encode() sends such a value as it is)."""
        fp, body = split_header(data)
        ws = self._by_fp.get(fp)
        if ws is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}")
        try:
            value: Any = fastavro.schemaless_reader(io.BytesIO(body), ws.parsed, ws.reader)
            if isinstance(value, dict) and COLUMNS in value and not columns:
                cols = value.pop(COLUMNS)
                if cols is not None:
                    value["records"] = from_columns(cols)
        except Exception as exc:  # fastavro raises many types on a corrupt body
            raise DecodeError(f"corrupt Avro body for {ws.name}: {type(exc).__name__}: {exc}") from exc
        return ws.name, value

    def writer_of(self, data: bytes) -> WriterSchema | None:
        """The writer schema of an encoded value, without decoding it (None: not ours or unknown)."""
        try:
            return self._by_fp.get(split_header(data)[0])
        except DecodeError:
            return None

    def fingerprint_of(self, data: bytes) -> str | None:
        try:
            return split_header(data)[0].hex()
        except DecodeError:
            return None
