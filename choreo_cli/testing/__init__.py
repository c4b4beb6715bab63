"""Testing pipelines: test files, running them, matching results, and rewriting expectations."""
