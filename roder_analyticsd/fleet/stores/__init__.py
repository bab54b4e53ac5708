"""Fleet store backends, side by side."""
