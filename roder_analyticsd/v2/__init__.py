"""analytics.v2: vocabulary, event model, redaction, the receiver's store and
the local view. Modules are imported where used (the CLI stays light)."""
