"""The stage chain: source → decode → redact → attribute → project → write.

Each stage module holds one pure function over a `Batch` (data in, data
out). Reading and decoding a log format live in `roder_analyticsd.sources`;
only `sources.files` reads log files and only `store.writer` writes.
"""
