"""The process backend: manycore's own worker processes and the supervisor thread that runs them.

One module per reason to change (see docs/architecture.md, "The process backend"):

- ``_supervisor``: ``Scheduler``, assembled from the parts below; the supervisor loop, deadlines and recovery
  calls, broadcasts, the public scheduler interface.
- ``_assign``: the assignment policy (which chunk goes to which worker, work stealing).
- ``_sending``: pickling and sending chunks, the lent path of a blocking ``apply``.
- ``_reading``: the poll, checks of what workers send, delivery of results.
- ``_lifecycle``: workers coming and going (start, EOF, reap, shutdown), exit and fork hooks.
- ``_workers``: the handle of one worker process (``Worker``), its frame checks and status page.
- ``_payload``: chunk and result encoding, shared-memory segments of results.
- ``_deadlines``: which running item overran its ``task_timeout``.
- ``_poller``: the ``epoll`` the supervisor waits in.
- ``_state``: the attributes these parts share.

The recovery policy (a lost chunk's fate) is ``manycore._recovery``, shared with the engine backends.
"""
