"""Names of the sub-trees a training-state checkpoint holds beside the model's weights."""

# ``rank_states``: the own state of each rank of a sharded checkpoint read as one (files/sharded_as_one.py)
RESERVED = ("optimizer", "scheduler", "scaler", "sampler", "rng", "callbacks", "extra", "rank_states")


def is_training_part(name: str) -> bool:
    """True for flat names that belong to the training state, not to the network."""
    return name.split(".", 1)[0] in RESERVED
