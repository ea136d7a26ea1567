"""Helpers that write tiny random-weight models in every real checkpoint format (for tests and demos)."""
