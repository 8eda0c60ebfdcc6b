"""What a run reports: run metrics, the HParams session, provenance, sweep summaries, the report command and its plots."""
