"""weighted_mtp: multi-token prediction fine-tuning with per-token loss weighting."""

__version__ = "0.1.0"
