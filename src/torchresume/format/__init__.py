"""Bytes of one checkpoint: the native format, encryption, foreign formats, detection."""
