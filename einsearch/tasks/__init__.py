"""Tasks: data, a model shell around L copies of the searched block, a loss, metrics and a
default budget (see `einsearch.tasks.base`).  Address one by text with `get_task`:

    get_task("mqar:vocab=256,seq_len=64,pairs=8")
    get_task("csv:/data/ETTh1.csv,horizon=192")
    get_task("lm")          # bytes of the Python standard library's source
"""

from einsearch.tasks.base import Budget, Examples, Splits, Task, TaskError
from einsearch.tasks.registry import DEFAULT_TASK, TASKS, describe_tasks, get_task

__all__ = ["DEFAULT_TASK", "TASKS", "Budget", "Examples", "Splits", "Task", "TaskError", "describe_tasks", "get_task"]
