"""The index folder: SQLite (the truth), its schema and checks, the writer lock, the hnsw and FTS5 indexes."""
