"""The cluster a sweep runs on, and a rehearsal of it before it costs money.

* ``node_types``: what an autoscaling cluster can grow to (its node types, from ``cluster.yaml`` or the
  autoscaler), and the check that refuses a request no node type can ever hold;
"""
