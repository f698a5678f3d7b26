"""Errors raised in the task's terms, shared by the tasks and the batches they encode."""


class TaskError(ValueError):
    """Inputs or outputs that the task cannot map to the network, said in the task's terms."""
