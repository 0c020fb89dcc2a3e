"""Capture: the context a write carries and what lands in the trail for it (the client, the comment, column rules, concurrency, bad input)."""
