"""Where records run: executors only decide which worker runs a record, never what it does."""
