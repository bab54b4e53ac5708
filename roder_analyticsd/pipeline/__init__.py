"""The stage chain: source → decode → redact → attribute → project → write.

Each stage module holds one pure function over a `Batch` (data in, data
out); only `source` reads files and only `store.writer` writes.
"""
