"""The index's pure handler: applies released batches, manifests, clinical records and retractions
to the worker's store (no Kafka here; the app feeds it decoded events)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gdx.common.errors import PermanentError, TransientError
from gdx.index.cohort import Ontology
from gdx.index.settings import IndexSettings
from gdx.index.store import IndexStore, Source


class IndexHandler:
    """Applies each event to the store; every event is idempotent, so redelivery is harmless."""

    def __init__(self, store: IndexStore):
        self.store = store

    @classmethod
    def from_settings(cls, settings: IndexSettings) -> IndexHandler:
        ontology = Ontology.load(settings.ontology_files) if settings.ontology_files else None
        return cls(IndexStore(settings.store_path(), synchronous=settings.synchronous, cache_mb=settings.cache_mb,
                              reader_cache_mb=settings.reader_cache_mb,
                              purge_on_retraction=settings.purge_on_retraction, ontology=ontology))

    def handle(self, schema_name: str, value: dict[str, Any], *, topic: str | None = None,
               partition: int | None = None, offset: int | None = None) -> None:
        """Apply one event. With its position given, the store records it in the same transaction and
        skips events it already has (see `IndexStore.positions` for resuming after a restart)."""
        source = Source(topic, partition, offset) if topic is not None and partition is not None \
            and offset is not None else None
        name = schema_name.rsplit(".", 1)[-1]
        try:
            if name == "ReleasedVariantBatch":
                self.store.add_batch(value, source)
            elif name == "PseudoFileManifest":
                self.store.add_manifest(value, source)
            elif name == "ReleasedClinicalRecord":
                self.store.cohort.add_record(value, source)
            elif name == "Retraction":
                self.store.retract(value, source)
            else:
                raise PermanentError(f"the index does not consume {schema_name}", reason_code="unexpected-schema")
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"{name} is malformed: {type(exc).__name__}: {exc}",
                                 reason_code="invalid-input") from None
        except sqlite3.OperationalError as exc:
            # locked database, full disk: may succeed on retry; nothing was committed
            raise TransientError(f"index store: {exc}") from exc

    def commit(self) -> None:
        """Called by the runner before it commits offsets: make everything applied so far durable."""
        self.store.checkpoint()

    def completeness(self, file_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per file (every one, or those of `file_ids`): dataset, file_id, batches expected/indexed,
        complete (for `gdx status`)."""
        return self.store.completeness(file_ids)
