"""Application layer: the command line, Hydra set-up, config schemas and the commands beside a run (predict, reproduce)."""
