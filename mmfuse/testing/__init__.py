"""mmfuse.testing: conformance kit for plugin authors (being built)."""
