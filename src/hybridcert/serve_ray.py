"""``hybridcert serve --executor ray``: the service as a Ray Serve deployment of N replicas.

Each replica holds one model and one :class:`~hybridcert.scheduler.LookScheduler`
(the app of :func:`hybridcert.serve.create_app`, built on the replica at its
first request), with ``gpus_per_replica`` GPUs; Ray Serve's proxy spreads the
requests over the replicas. An answer depends only on the request, its seed and
the settings, so any replica gives the same one. Needs ``ray[serve]``.
"""

from __future__ import annotations

import dataclasses
import logging

from .serve import ServeOptions, create_app

logger = logging.getLogger(__name__)

__all__ = ["deploy"]


def deploy(plan, options: ServeOptions, *, replicas: int = 2, cpus_per_replica: float = 1,
           gpus_per_replica: float = 0, address: str | None = None, blocking: bool = False):
    """Run ``plan``'s service on Ray Serve at ``options.host:options.port``; the app handle.

    ``blocking`` keeps serving until interrupted (the command line); otherwise
    the deployment runs in the background until ``ray.serve.shutdown()``.
    """
    if not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    if cpus_per_replica <= 0 or gpus_per_replica < 0:
        raise ValueError("cpus_per_replica must be > 0 and gpus_per_replica >= 0, got "
                         f"{cpus_per_replica!r}, {gpus_per_replica!r}")
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    # the replicas load their own model (SmoothedBuilder pickles without the loaded one)
    plan = dataclasses.replace(plan, task=dataclasses.replace(plan.task, model=None))
    app = create_app(plan, options)

    @serve.deployment(num_replicas=replicas,
                      ray_actor_options={"num_cpus": cpus_per_replica,
                                         "num_gpus": gpus_per_replica},
                      max_ongoing_requests=options.queue_size)
    @serve.ingress(app)
    class HybridcertGuard:
        pass

    serve.start(http_options={"host": options.host, "port": options.port})
    return serve.run(HybridcertGuard.bind(), name="hybridcert", route_prefix="/",
                     blocking=blocking)
