"""Integrations with other training libraries: thin adapters over the same core (CheckpointManager,
the file layer, naming, retention). The core never imports them; each is imported by its own name
(``torchresume.integrations.transformers``) and needs its library installed.
"""
