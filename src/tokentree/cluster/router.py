"""Ray Serve's request router for the replicas: a conversation's requests go to the replica that
served it (rendezvous hashing of its session key), unless that one is full (its
``max_ongoing_requests`` reached), then to the least loaded of the others (Ray probes their queue
lengths within a rank). Requests without a key are balanced as Ray balances them."""

from __future__ import annotations

from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .session_key import rendezvous_order


class SessionAffinityRouter(RequestRouter):
    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        session = pending_request.kwargs.get("session") if pending_request is not None else None
        if not session or len(candidate_replicas) < 2:
            return [candidate_replicas]
        names = [replica.replica_id.unique_id for replica in candidate_replicas]
        ranked = [candidate_replicas[i] for i in rendezvous_order(session, names)]
        return [ranked[:1], ranked[1:]]
