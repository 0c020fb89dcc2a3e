"""History: time travel and revert, with the trail in the same database or in one of its own."""
