"""Training engine pieces: optimizer parameter groups, per-step schedule state, synthetic batches."""
