"""Human pose estimation plugin: registers its task, head, datasets and data commands."""

from tasks.pose import coco, commands, lsp, mpii, task  # noqa: F401  (registration side effects)
