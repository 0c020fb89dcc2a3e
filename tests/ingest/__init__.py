"""Ingest: pgoutput, the decoder, the streaming worker and bemi.ingest(), exactly once under faults."""
