"""A worker process for the task tests: ``python -m tests.integration.task_worker [num_workers]``.

Every run of a task function appends a line ``<task name> <input as JSON>`` to the file ``$RUN_LOG``, so a test
can count how often each task really ran."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import kachery_cloud as kcl


def _ran(name: str, **task_input: Any) -> None:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{name} {json.dumps(task_input, sort_keys=True)}\n")


def add(a: float, b: float, delay: float = 0) -> dict[str, float]:
    _ran("test.add", a=a, b=b, delay=delay)
    time.sleep(delay)
    return {"sum": a + b}


def echo(**task_input: Any) -> Any:
    _ran("test.echo", **task_input)
    return task_input


def fail(reason: str) -> None:
    _ran("test.fail", reason=reason)
    raise ValueError(f"refusing: {reason}")


def slow(steps: int, step_sec: float) -> int:
    _ran("test.slow", steps=steps, step_sec=step_sec)
    for step in range(steps):
        kcl.report_task_progress(f"step {step + 1} of {steps}")
        time.sleep(step_sec)
    return steps


def arrays(seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "float64": rng.standard_normal(1000),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324]),
        "int64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
        "uint8_2d": rng.integers(0, 256, size=(7, 5), dtype=np.uint8),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "big_endian": np.arange(6, dtype=">i4"),
        "complex": np.array([1 + 2j, -3.5j]),
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 3)),
        "scalar": np.float64(0.1),
        "nested": [np.arange(3), {"deep": np.ones(2, dtype=np.int16)}],
    }


def main() -> None:
    backend = kcl.TaskBackend(num_workers=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    backend.register_task_handler(task_type="calculation", task_name="test.add", task_function=add)
    backend.register_task_handler(task_type="action", task_name="test.echo", task_function=echo)
    backend.register_task_handler(task_type="action", task_name="test.fail", task_function=fail)
    backend.register_task_handler(task_type="action", task_name="test.slow", task_function=slow)
    backend.register_task_handler(task_type="calculation", task_name="test.slow", task_function=slow)
    backend.register_task_handler(task_type="calculation", task_name="test.arrays", task_function=arrays)
    print("worker ready", flush=True)
    backend.run()
    print("worker stopped", flush=True)


if __name__ == "__main__":
    main()
