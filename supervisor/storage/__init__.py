"""Where events and turn records are kept: the file backend, compaction, retention and the history keeper."""
