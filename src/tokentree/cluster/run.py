"""``tokentree serve --replicas N``: start (or join) a Ray cluster, deploy the application and serve
until SIGINT or SIGTERM, then take it down."""

from __future__ import annotations

import re
import signal
import threading

from ..errors import TokentreeError
from ..server.config import ServeConfig
from .config import ClusterConfig

APP_NAME = "tokentree"
NAMESPACE = "tokentree"  # where the deployment's named actors live


def import_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise TokentreeError(
            "serving replicas needs Ray Serve: pip install 'tokentree[cluster]'"
        ) from None
    return ray, serve


def serve_cluster(args, config: ServeConfig, cluster: ClusterConfig) -> None:
    """Serve the app on Ray Serve replicas at ``config.host:config.port`` until a signal."""
    ray, serve = import_ray()
    from .deployment import build_app

    address = None if cluster.ray_address == "auto" else cluster.ray_address
    try:
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False,
                 logging_level="warning")  # fmt: skip
    except (ConnectionError, ValueError) as exc:
        where = cluster.ray_address
        raise TokentreeError(f"cannot join the Ray cluster at {where}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        try:
            serve.run(build_app(args, config, cluster), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica that cannot load its model: no traffic at all
            reason = start_failure(f"{exc}\n{deployment_messages(serve)}")
            raise TokentreeError(f"the replicas did not start: {reason}") from None
        print(f"tokentree: serving {cluster.replicas} replicas on http://{config.host}:"
              f"{config.port} (Ray Serve)", flush=True)  # fmt: skip
        stop.wait()
    finally:
        serve.shutdown()
        _kill_store(ray)
        ray.shutdown()


def _kill_store(ray) -> None:
    """The knowledge store is detached (it outlives a builder): end it with the deployment."""
    from .deployment import STORE_NAME

    try:
        ray.kill(ray.get_actor(STORE_NAME))
    except ValueError:  # there was none (--share-every 0)
        pass


def deployment_messages(serve) -> str:
    """What Ray Serve says about each deployment of the app (a failed replica's traceback)."""
    try:
        app = serve.status().applications[APP_NAME]
    except Exception:  # noqa: BLE001 - only to explain a failure already being reported
        return ""
    return "\n".join(d.message for d in app.deployments.values() if d.message)


def start_failure(text: str) -> str:
    """The reason a deployment failed: a replica's TokentreeError (a wrong path, a bad flag) when
    Ray's messages carry one, else Ray's first line."""
    found = re.findall(r"TokentreeError: (.+)", text)
    if found:
        return found[-1].strip()
    return text.strip().splitlines()[0] if text.strip() else "unknown"
