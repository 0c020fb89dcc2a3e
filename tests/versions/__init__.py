"""Versions: what differs between PostgreSQL versions (the writes that never fail, generated
columns, commit times), and the refusal of 13; run on 14, 16, 17 and 18 by make test-versions."""
