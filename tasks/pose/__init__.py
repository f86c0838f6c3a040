"""Human pose estimation plugin: registers its task, head, datasets and data commands."""

from tasks.pose import head  # noqa: F401  (registers the slim_deconv head)
