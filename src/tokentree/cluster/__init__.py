"""``tokentree serve --replicas N``: the same OpenAI-compatible app served by Ray Serve replicas.

An ingress deployment reads each request once, names its conversation (:mod:`.session_key`) and
hands it to the replicas' deployment, whose request router (:mod:`.router`) keeps a conversation
on the replica that served it unless that one is full; each replica runs the whole single-machine
app in process (:mod:`.asgi`), so limits, errors, auth and metrics are one code path; replicas
trade what their drafters learn through a small actor (:mod:`.knowledge`). Ray is imported only
here (``pip install 'tokentree[cluster]'``).
"""
