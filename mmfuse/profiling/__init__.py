"""``mmfuse profile``: where a training step's time goes (``clock``: per-module timers; ``run``:
the profiled steps; ``advice``: what to change). See docs/performance.md."""
