"""The live daemon's parts: the store lock, the file watcher, its options, status."""
