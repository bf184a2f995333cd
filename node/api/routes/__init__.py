"""The local API's routes, one module per area of the node.

Each module has ``register(api, ...)`` taking exactly the services its
handlers call; handlers check every parameter (:mod:`node.api.params`), call
service methods and shape the JSON answer.  :func:`node.daemon.run_node`
registers them all, so the route table (and the OpenAPI document built from
it) is complete before the socket opens.
"""
