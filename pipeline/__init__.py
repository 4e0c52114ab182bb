"""cimcosim pipeline: stage functions, their configs, artifacts and the CLI."""
