"""The helpers every layer may use: atomic files, shared-memory regions, shard plans with
the ``Task`` base that engines run, and the model file's format."""
