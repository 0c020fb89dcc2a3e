"""The bemi-pg command line as its users run it: connection, output, status, and the snippets of the docs."""
