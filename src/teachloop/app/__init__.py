"""teachloop.app."""
