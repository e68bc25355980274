"""The scoring service as a Ray Serve deployment with N replicas (`pgenrm serve --ray --replicas N`).

Each replica builds its own scorer (its own judge, or its own client of a vLLM/SGLang server) and
serves the very app of `pgenrm serve` (`create_app`): same endpoints, auth, limits, batching and
metrics. Ray Serve's HTTP proxy spreads the requests over the replicas.

Why the driver loads the config: replicas may run on other nodes where the YAML file does not
exist, so the validated config travels to them as data, and a typo fails here, before any replica
starts. The bearer token is resolved here too (a remote node's environment may lack
$PGENRM_API_KEY).

Batching is per replica: samples of one (user, prompt) that land on different replicas are judged
in separate batches. Rewards stay the same (a reward never depends on its batch-mates); only part of
the group-mode economy is lost, so use as few replicas as keep the judges busy.

Needs the `ray` extra (`ray[serve]`). Ray's own address rules apply: `$RAY_ADDRESS` or a cluster
started with `ray start` on this machine is joined, otherwise a local one is started.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import ray
from ray import serve

from pgenrm_plugins.config import PGenRMConfig, config_dict
from pgenrm_plugins.server.app import API_KEY_ENV, ServerSettings

log = logging.getLogger(__name__)
APP_NAME = "pgenrm"


def build_app(config: str | os.PathLike | dict | PGenRMConfig | None = None,
              settings: ServerSettings | dict | None = None, replicas: int = 2,
              replica_cpus: float = 1.0, replica_gpus: float = 0.0,
              max_ongoing_requests: int | None = None) -> Any:
    """A bound Ray Serve application (`serve.run(build_app(...))`) of `replicas` scoring replicas.

    `max_ongoing_requests` is how many requests Ray hands one replica at once; Ray's default (5)
    would starve the batcher, so it defaults to 4 x `max_batch_requests`.
    """
    cfg = config_dict(str(config) if isinstance(config, os.PathLike) else config)
    s = settings if isinstance(settings, ServerSettings) else ServerSettings.model_validate(settings or {})
    if s.api_key is None and os.environ.get(API_KEY_ENV):
        s = s.model_copy(update={"api_key": os.environ[API_KEY_ENV]})

    def build_asgi_app():
        # Runs on the replica, when Ray starts it: the judge is loaded there, once per replica.
        from pgenrm_plugins.scoring import load_scorer
        from pgenrm_plugins.server.app import create_app

        return create_app(load_scorer(cfg, local=True), s)

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name="PGenRMScoring",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
        max_ongoing_requests=max_ongoing_requests or 4 * s.max_batch_requests,
        # Ray waits this long for a replica's in-flight requests before stopping it.
        graceful_shutdown_timeout_s=s.graceful_shutdown_s,
    )
    return deployment.bind()


def run(config_path: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8017,
        settings: ServerSettings | dict | None = None, replicas: int = 2, replica_cpus: float = 1.0,
        replica_gpus: float = 0.0, blocking: bool = True) -> None:
    """Start Serve on the Ray cluster (joined or local), deploy the replicas, serve until Ctrl-C."""
    s = settings if isinstance(settings, ServerSettings) else ServerSettings.model_validate(settings or {})
    s = s.model_copy(update={"host": host, "port": port})
    if host not in ("127.0.0.1", "localhost", "::1") and not (s.api_key or os.environ.get(API_KEY_ENV)):
        log.warning("serving on %s without a bearer token: set $%s to require one", host, API_KEY_ENV)
    app = build_app(str(config_path) if config_path else None, s, replicas, replica_cpus, replica_gpus)
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": host, "port": port})
    if not blocking:
        serve.run(app, name=APP_NAME, route_prefix="/")
        return
    # Ctrl-C ends the wait; then our app is deleted, its replicas finishing their in-flight
    # requests. A Ray cluster this process started ends with it; a joined one stays up.
    # (On SIGTERM, Ray's own handler in the driver usually ends the process first.)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        log.info("pgenrm scoring service: %d Ray Serve replicas at http://%s:%d", replicas, host, port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.warning("stopping: deleting the %s application", APP_NAME)
    finally:
        serve.delete(APP_NAME)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
