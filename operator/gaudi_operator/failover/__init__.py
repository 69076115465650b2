"""What happens when a worker fails: classify the failure and decide (`policy`, pure),
the signals beyond the pod list — nodes, vanished pods, HPU health (`signals`) — and the
stall clock (`stall`), failover metrics (`recording`), and the kopf wiring (`wiring`)."""
