"""Resizing a job from a Prometheus metric: the HPA-like decision (`policy`, pure), the
cluster's free room for new workers (`capacity`, pure), the loop that reads metrics and
writes /scale (`loop`), and its kopf wiring (`wiring`)."""
