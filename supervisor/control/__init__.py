"""Driving a daemon from outside: the Python ``Client`` and the ``runnerctl`` CLI."""
