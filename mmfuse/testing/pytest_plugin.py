"""pytest plugin of mmfuse.testing (being built)."""
