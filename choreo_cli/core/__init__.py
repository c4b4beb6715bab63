"""The engine: steps, contexts, results and the runners that call them (standard library only)."""
