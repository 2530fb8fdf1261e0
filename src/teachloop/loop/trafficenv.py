"""An alias kept for stored configs: ``TrafficPrompts`` is the built-in environment ``traffic`` now.

Training runs the loop started before the environment moved to
``envs.builtin.traffic`` name it by module and class in their stored config;
importing it from here keeps those configs loading (trusted callers only, as
any ``module:attr`` reference). New configs name it ``traffic``. Nothing in
teachloop imports this module.
"""

from teachloop.envs.builtin.traffic import TrafficPrompts

__all__ = ["TrafficPrompts"]
