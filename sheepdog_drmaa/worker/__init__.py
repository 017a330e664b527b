"""The program a worker runs on an execution node: ``python -m sheepdog_drmaa.worker``.

It says hello to the server on the submit host, receives the function, then leases batches of
tasks, runs them in order, and reports their results or exceptions together with its next lease
(or earlier, when they grow large or old), until the server has no more work for it. A thread
sends heartbeats, naming the running task, while the worker holds tasks.

The work happens in a forked child. The parent only waits for it, so that whatever the function
does (``os._exit(99)`` included) the job never exits with a status Grid Engine treats specially,
and a child killed by a signal makes the job end by the same signal. The child keeps the task it
runs in memory shared with the parent: when the child dies mid-task (a crash, the kernel's OOM
killer), the parent tells the server which task that was, so that only that one is charged.

- ``supervisor``: the parent process: forks the child, passes its ending on, ends what it left;
- ``serve``: the child's loop: hello, load the function, lease, run, report;
- ``channel``: the signed requests to the server, the reports waiting to go, the heartbeat thread;
- ``task``: running one task: its argument, f, its output, its report.

Start-up is on every task's path: each module of this package imports the standard library,
cloudpickle and, of sheepdog_drmaa, only protocol, messages, worker_ids and errors (each says which).
"""
