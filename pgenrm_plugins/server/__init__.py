"""The shared scoring service: one judge behind HTTP for every trainer process.

    from pgenrm_plugins.server import create_app, ServerSettings, serve, ScoringClient

`create_app(scorer, settings)` builds the FastAPI app (endpoints `/v1/score`, `/get_reward` for
OpenRLHF, `/healthz`, `/metrics`); `serve(config_path, host, port)` loads the scorer and runs it
under uvicorn. Concurrent requests are coalesced into backend batches by `Batcher`; requests of the
same (user, prompt) are merged so group mode derives persona and criteria once. Needs the `server`
extra (fastapi, uvicorn, prometheus-client); the client only needs httpx. `server.ray_serve` runs the
same app as a Ray Serve deployment with N replicas (the `ray` extra).
"""

from __future__ import annotations

__all__ = ["Batcher", "ScoringClient", "ScoringClientError", "ServerSettings", "create_app", "serve"]


def __getattr__(name):
    if name in ("create_app", "ServerSettings", "serve"):
        from pgenrm_plugins.server import app

        return getattr(app, name)
    if name == "Batcher":
        from pgenrm_plugins.scoring.batching import Batcher

        return Batcher
    if name in ("ScoringClient", "ScoringClientError"):
        from pgenrm_plugins.scoring import remote

        return getattr(remote, name)
    raise AttributeError(name)
