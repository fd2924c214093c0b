"""The cluster a sweep runs on, and a rehearsal of it before it costs money.

* ``node_types``: what an autoscaling cluster can grow to (its node types, from ``cluster.yaml`` or the
  autoscaler), and the check that refuses a request no node type can ever hold;
* ``simulated``: a copy of a cluster config under Ray's own autoscaler with the fake multi-node provider (real
  raylets on this machine, GPUs as numbers), started and stopped without touching any other Ray here;
* ``rehearsal``: ``vlm-sweep rehearse``, the submitted sweep on that copy, watched and reported.
"""
