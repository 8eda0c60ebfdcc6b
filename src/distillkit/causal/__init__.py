"""Causal language models (``task=causal_lm``): teachers, students and token-level losses."""
