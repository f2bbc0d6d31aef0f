"""Keep Serve's replicas on loopback when the local Ray is: a worker-process setup hook.

Ray Serve 2.60 starts, in every replica, a gRPC server for calls between deployments and binds it to ``[::]:0``
(``serve/_private/replica.py``), whatever the node address: on the local service that was a listener on every
interface in each replica (token-checked, but reachable). Ray has no setting for it, so ``runtime.start_ray`` names
this hook in the local Ray's job ``runtime_env``: each worker runs it before any task or actor, and the replica's
wildcard address becomes 127.0.0.1, the address Ray gives its peers on a loopback-only node. Never used when
joining a cluster, where other nodes must reach the replicas. It imports Ray: only Ray's workers load it.
"""

from __future__ import annotations

from typing import Any

#: What ``runtime_env`` names (``worker_process_setup_hook`` takes a dotted path).
HOOK = "aegis_online.rayserve.loopback.bind_replica_servers_to_loopback"
_WILDCARDS = ("[::]:", "0.0.0.0:")


def loopback_address(address: str) -> str:
    """``[::]:0`` -> ``127.0.0.1:0``; any other address unchanged.

    >>> loopback_address("[::]:0"), loopback_address("0.0.0.0:9000"), loopback_address("127.0.0.1:5")
    ('127.0.0.1:0', '127.0.0.1:9000', '127.0.0.1:5')
    """
    for wildcard in _WILDCARDS:
        if address.startswith(wildcard):
            return "127.0.0.1:" + address[len(wildcard) :]
    return address


def bind_replica_servers_to_loopback() -> None:
    """Wrap the function Serve's replica binds its gRPC server with (a no-op if a Ray version renames it: the
    exposure test would then say so)."""
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "_aegis_loopback", False):
        return

    def bind_on_loopback(server: Any, address: str) -> Any:
        return bind(server, loopback_address(address))

    bind_on_loopback._aegis_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_on_loopback
