"""Testing utilities for ``modeling_bigmoe``: an offline Hub-API server for push/pull tests."""
