"""Learners trained above the frozen extractor's cut, in pure numpy."""
