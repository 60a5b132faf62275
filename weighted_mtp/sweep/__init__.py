"""Hydra multirun support: per-job names (``naming``), per-job result files
(``results``) and the sweep summary callback (``summary``)."""
