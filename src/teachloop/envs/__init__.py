"""teachloop.envs."""
