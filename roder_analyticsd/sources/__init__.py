"""Sources: one module per agent log format (discovery + decode).

`files` tails append-only JSONL logs from crash-exact checkpoints for every
format; `roder` knows where Roder's logs are and what their lines mean.
"""
