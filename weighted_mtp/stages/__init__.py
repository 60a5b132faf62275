"""Stages: each module builds its :class:`~weighted_mtp.training.task.Task` and calls the
one loop. ``weighted_mtp.app`` dispatches ``experiment.stage`` to ``stages/<stage>.py``'s
``run(cfg)``; adding a stage is one module here plus ``conf/stage/<stage>.yaml``."""
