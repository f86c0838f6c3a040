"""Human pose estimation plugin: registers its task, head and data commands on import."""

from tasks.pose import commands, head, task  # noqa: F401  (registration side effects)
