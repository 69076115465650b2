"""The machinery under every behaviour: kopf settings and configuration, the keyed work
queue and the controller that runs reconcile passes over it. Knows no job semantics."""
