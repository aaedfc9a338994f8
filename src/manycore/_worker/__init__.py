"""The worker side: the code a worker process runs. It imports nothing of the parent side (the scheduler, jobs,
results, options, backends), only the shared protocol, framing, shared memory and pickling modules
(``tests/test_worker_imports.py``; the import contract in pyproject.toml).

Empty on purpose: the fork server and spawned workers import ``manycore._worker._entry``, and what they load
is start-up time (W6).
"""
