"""`kubectl gtj`: GaudiTrainingJobs as the demo shows them, and why one is not running.

A kubectl plugin (the executable `kubectl-gtj` on PATH). It reads the jobs through the
user's kubeconfig and each rank's training metrics through the API server's pod proxy or a
Prometheus, and never imports the operator: it needs only the Kubernetes client, rich and
prometheus_client's text parser (the `cli` extra).
"""
