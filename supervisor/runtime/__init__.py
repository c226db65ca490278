"""The turn runtime: spawning, the relay thread, process trees, limits, admission, recovery, the stream registry."""
