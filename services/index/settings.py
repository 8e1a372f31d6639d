"""Settings of the index service (environment variables `GDX_INDEX_*`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gdx.common.service import ServiceSettings
from gdx.common.settings import SettingsError


@dataclasses.dataclass(frozen=True)
class IndexSettings(ServiceSettings):
    """The index worker's store and query options."""

    prefix = "GDX_INDEX_"

    store_file: str = dataclasses.field(
        default="index.sqlite3", metadata={"doc": "SQLite file name inside the worker's data folder"})
    synchronous: str = dataclasses.field(
        default="NORMAL",
        metadata={"doc": "SQLite synchronous mode: NORMAL syncs the WAL at each checkpoint (before offsets are"
                         " committed), FULL at every batch"})
    cache_mb: int = dataclasses.field(default=64, metadata={"doc": "SQLite page cache of the writing connection, MiB"})
    reader_cache_mb: int = dataclasses.field(
        default=8, metadata={"doc": "SQLite page cache of each read connection, MiB (pages it misses come from the OS's"
                                    " file cache)"})
    concurrent_queries: int = dataclasses.field(
        default=2, metadata={"doc": "variant and individual queries answered at once; the others wait (a query holds"
                                    " its whole result in memory, so this bounds the memory they take together)"})
    purge_on_retraction: bool = dataclasses.field(
        default=True, metadata={"doc": "erase retracted participants' genotypes from the store at each commit (they are"
                                       " hidden from answers either way)"})
    ontology_files: tuple[Path, ...] = dataclasses.field(
        default=(), metadata={"doc": "comma-separated OBO files (HPO, MONDO...) for descendant-term filters"})
    query_port: int = dataclasses.field(default=5060, metadata={"doc": "port of the internal query API"})
    allocator: str = dataclasses.field(
        default="jemalloc", metadata={"doc": "malloc of `gdx serve index`: jemalloc (preloaded from Debian's libjemalloc2;"
                                             " glibc's with a warning where it is not installed) or glibc. glibc's heap"
                                             " fragments under the index's page caches and query buffers: its RSS grew"
                                             " 3 to 6 MB a minute in soaks with the memory in use flat"})
    size_interval_s: float = dataclasses.field(
        default=30.0, metadata={"doc": "at most this often the index size gauges are recomputed after a change (a"
                                       " read of every variant key, about 1.5 s per million, off the consumer thread)"})

    def validate(self) -> None:
        super().validate()
        if self.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise SettingsError("GDX_INDEX_SYNCHRONOUS: expected NORMAL, FULL, EXTRA or OFF")
        if self.size_interval_s <= 0:
            raise SettingsError("GDX_INDEX_SIZE_INTERVAL_S: must be positive")
        if self.concurrent_queries < 1:
            raise SettingsError("GDX_INDEX_CONCURRENT_QUERIES: must be at least 1")
        if self.allocator not in ("jemalloc", "glibc"):
            raise SettingsError("GDX_INDEX_ALLOCATOR: expected jemalloc or glibc")
        if self.cache_mb < 1 or self.reader_cache_mb < 1:
            raise SettingsError("GDX_INDEX_CACHE_MB, GDX_INDEX_READER_CACHE_MB: must be at least 1")
        for path in self.ontology_files:
            if not Path(path).is_file():
                raise SettingsError(f"GDX_INDEX_ONTOLOGY_FILES: {path} is not a file")

    def store_path(self) -> Path:
        return self.state_dir("index") / self.store_file
