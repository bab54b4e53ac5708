"""The fleet (analytics.v2): vocabulary, event model, redaction, the
receiver, the forwarder and the fleet stores (`stores/`). Modules are
imported where used (the CLI stays light)."""
