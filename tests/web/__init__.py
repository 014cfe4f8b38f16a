"""Browser tests of the web page (a package, so its conftest never shadows tests/e2e/conftest.py)."""
