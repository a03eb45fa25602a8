"""The tests' helpers: tiny real checkpoints, generated documents and files, crash and interrupt
harnesses, and server fixtures. Tests import them as `helpers.NAME` (tests/ is on sys.path through
its conftest.py; subprocesses get it on PYTHONPATH)."""
