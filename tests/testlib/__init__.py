"""Helpers more than one test folder uses (tests/e2e, tests/web, tests/deploy): the real sdserve
server on a free port, and the HTTP pieces of the fake hubs. Each folder puts tests/ on sys.path
to import it (the folders are run separately and their conftest modules share one name)."""
