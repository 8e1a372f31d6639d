"""The index service: a per-worker SQLite index of released variants and individuals, and the
internal query API that publish fans out to every worker."""
