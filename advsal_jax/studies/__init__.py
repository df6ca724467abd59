"""The studies' experiment pipelines (used by the binaries in experiments/)."""
