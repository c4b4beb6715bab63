"""The command-line front door: one module per command, all mapping options to library calls."""
