"""teachloop.store."""
