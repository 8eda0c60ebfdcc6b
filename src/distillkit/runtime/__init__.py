"""Process-level plumbing: distributed set-up, atomic file writes, locks, offline assets, checkpoints."""
