//! TODO(wal): owned by the WAL work in progress.
