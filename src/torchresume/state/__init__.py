"""What a checkpoint holds: nested state <-> flat tensors + JSON skeleton, RNG state."""
