"""Long-term, private usage analytics for the Roder coding agent."""

__version__ = "0.1.0"
