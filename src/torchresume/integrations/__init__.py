"""Adapters between torchresume's core and other training frameworks (``lightning``).

Each integration is imported on its own (``torchresume.integrations.lightning``); the core
never imports this package, so ``import torchresume`` stays free of their dependencies.
"""
