"""The ingest runtime behind ``bemi-pg worker``, in the stages a change travels through:
the replication stream and its feedback (stream), pgoutput's message framing (pgoutput),
staged rows in COPY format (staging), batches stored with bemi.store (writer), and the worker
that runs them and recovers from what goes away (worker)."""
