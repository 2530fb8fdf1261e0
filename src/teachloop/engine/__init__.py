"""teachloop.engine."""
