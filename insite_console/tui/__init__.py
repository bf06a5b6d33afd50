"""The Textual console. The only package allowed to import Textual (see tests/test_import_hygiene.py)."""
