"""`--engine ray`: a dataset build's tracing on a Ray cluster (`pip install 'tracekit[ray]'`).
Ray actors, one warm sandbox each (the local engine's `_Tracers`), trace chunks of programs
(and test files); results come back in order, and shards, manifest and resume stay with the
build on this machine, so the rows are the local engine's."""

from __future__ import annotations

import os

from tracekit.datasets.build import BuildError, BuildOptions, _Tracers


class _RayWorker:
    """A Ray actor: one warm sandbox, programs traced in chunks."""

    def __init__(self, options: BuildOptions):
        self.tracers = _Tracers(options)

    def trace(self, programs: list, again: bool = False) -> list:
        return [self.tracers.trace(program, again) for program in programs]

    def close(self) -> None:
        self.tracers.__exit__(None, None, None)


# Ray 2.59+: `ray start --head` turns token authentication on, and a driver that connects to it
# needs RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token); without it the
# connection fails with no word of why.
_AUTH_HINT = ("; a cluster started with `ray start` (Ray 2.59+) asks for its token: run with "
              "RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, or "
              "RAY_AUTH_TOKEN)")


def _check_reachable(address: str) -> None:
    """A clear error at once when nothing listens at a HOST:PORT Ray address."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise BuildError(f"cannot reach Ray at {address} ({exc.strerror or exc}): start the "
                         "cluster (ray start --head) or check --address") from None


class RayEngine:
    """Ray actors (one per worker: `workers`, default every CPU of the cluster) trace chunks
    of programs; results come back in program order."""

    chunk = 16

    def __init__(self, options: BuildOptions, workers: int | None, address: str | None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise BuildError("--engine ray needs Ray: pip install 'tracekit[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                _check_reachable(address)  # ray.init waits minutes for an absent cluster
            local = {"num_cpus": workers} if address is None and workers else {}
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         **local)
            except Exception as exc:  # Ray raises many kinds; all mean the same here
                where = f" at {address}" if address else ""
                cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BuildError(f"cannot start or reach Ray{where}: {cause}"
                                 + _AUTH_HINT * bool(address and "RAY_AUTH_MODE" not in
                                                     os.environ)) from None
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1)(_RayWorker)
        self.actors = [actor.remote(options) for _ in range(count)]
        self.pool = ActorPool(self.actors)

    def map(self, programs: list, again: bool = False) -> list:
        chunks = [programs[i:i + self.chunk] for i in range(0, len(programs), self.chunk)]
        traces: list = []
        for part in self.pool.map(lambda actor, chunk: actor.trace.remote(chunk, again),
                                  chunks):
            traces += part
        return traces

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ray.get([actor.close.remote() for actor in self.actors], timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor has no sandbox left to close
            pass
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()
