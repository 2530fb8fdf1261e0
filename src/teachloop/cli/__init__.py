"""teachloop.cli."""
