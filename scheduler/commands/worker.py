"""``mono-quant worker``: a Celery worker for one GPU (``--gpu N``) or the CPU queue."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from mono_quant.scheduler.cliutil import HelpFormatter

    p = sub.add_parser("worker", help="run a worker: one per GPU, or a CPU worker",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant worker --gpu 0\n"
                              "  mono-quant worker --queues cpu --name cpu1@%h\n")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU index to pin (sets CUDA_VISIBLE_DEVICES before CUDA can start)")
    p.add_argument("--queues", default=None,
                   help="comma-separated queues (default: gpu,gpu.<model> with --gpu, else cpu)")
    p.add_argument("--name", default=None, help="node name (default gpuN@host / cpu-PID@host)")
    p.add_argument("--loglevel", default="info",
                   help="Celery log level: debug, info, warning, error")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Pin first: nothing below may initialise CUDA in this process (it never imports torch).
    import os

    from mono_quant.worker.pinning import node_name, pin_gpu, queues_for

    # A worker's stderr is a log: no third-party bars (Celery would log every redraw as
    # "WARNING celery.redirected"), transformers' chatter down to errors. The pool children
    # inherit this environment.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

    if args.gpu is not None:
        pin_gpu(args.gpu)
    queues = queues_for(args.gpu, args.queues.split(",") if args.queues else None)
    name = args.name or node_name(args.gpu)

    from mono_quant.config import get_settings
    from mono_quant.worker.app import app

    sweeper = _start_sweeper_when_ready(name)
    try:
        app.worker_main(celery_argv(queues, name, args.loglevel, get_settings().task_events))
    finally:  # the pool is gone: whatever this node still holds was interrupted
        if sweeper:
            sweeper[0].stop()
        _release_claims(name)
    return 0


def celery_argv(queues: list[str], name: str, loglevel: str, task_events: bool) -> list[str]:
    """The ``celery worker`` command line of one worker: prefork, one process. Task events
    (``MONO_QUANT_TASK_EVENTS``) are named on it when on; when off, nothing overrides
    ``worker_send_task_events=False`` (Flower's ``enable_events`` broadcast still can).

    >>> celery_argv(["cpu"], "cpu1@%h", "info", task_events=False)[-2:]
    ['--loglevel', 'info']
    """
    argv = ["worker", "--queues", ",".join(queues), "--hostname", name, "--concurrency", "1",
            "--pool", "prefork", "--loglevel", loglevel]
    return [*argv, "--task-events"] if task_events else argv


def _start_sweeper_when_ready(name: str) -> list:
    """Start this worker's reconcile sweeps (``scheduler.sweep``) once Celery is consuming
    (its pool children are forked by then); returns a list that will hold the thread."""
    from celery.signals import worker_ready

    from mono_quant.config import get_settings
    from mono_quant.scheduler.sweep import Sweeper

    settings, started = get_settings(), []
    if settings.reconcile_interval <= 0:
        return started

    @worker_ready.connect(weak=False)
    def _start(**_: object) -> None:
        sweeper = Sweeper(settings, name)
        sweeper.start()
        started.append(sweeper)

    return started


def _release_claims(name: str) -> None:
    """Hand this node's running jobs back after a clean shutdown, so another worker claims
    them at once (Celery has put their messages back on the queue); the interrupted attempt
    does not count. A crash (SIGKILL) is left to the heartbeat and ``reconcile``."""
    import logging

    from celery.utils.nodenames import default_nodename, host_format

    from mono_quant.catalog import Catalog, jobs

    node = host_format(default_nodename(name))
    try:
        catalog = Catalog()
        with catalog.begin() as session:
            released = jobs.release(session, node)
        catalog.dispose()
    except Exception as e:  # shutting down: never fail here; reconcile covers what is left
        logging.getLogger("mono_quant.worker").warning(
            "could not release the jobs of %s: %s", node, e)
        return
    if released:
        print(f"worker {node}: released job(s) {released} back to the queue", flush=True)
