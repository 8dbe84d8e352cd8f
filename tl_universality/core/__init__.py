"""Foundations every stage uses: the model protocol, errors, the cache folder, saved folders
(atomic, checksummed), the result protocol and unit names. Imports nothing else of the package."""
