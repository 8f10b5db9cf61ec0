"""Adapters between torchresume's core and other training frameworks (``lightning``, ``transformers``):
thin adapters over the same core (naming, retention, the save slot, the file layer). The core never
imports this package; each integration is imported by its own name and needs its library installed.
"""
