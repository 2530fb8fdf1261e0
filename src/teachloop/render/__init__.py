"""teachloop.render."""
