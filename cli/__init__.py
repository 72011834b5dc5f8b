"""The ``approval-flow`` command line: start processes, look at them, see who holds the lock."""
