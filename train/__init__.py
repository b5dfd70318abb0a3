"""Everything that makes a voice model: dataset ingest, slicing, features, training, index, export.

Imports ``infer`` (never the other way round); importing this package has no side effects.
"""
