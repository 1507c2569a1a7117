"""Harnesses the tests drive and that also run on their own for the longer documented runs
(``docs/results/faults.md``): ``python -m tests.harness.<name>`` from the checkout."""
