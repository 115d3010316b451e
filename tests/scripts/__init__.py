"""Programs the tests run in a subprocess (e.g. with 8 simulated devices): ``python -m tests.scripts.<name>``."""
