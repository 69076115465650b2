"""What the operator tells people: its Prometheus metrics (`metrics`) and the Kubernetes
Events it posts on jobs (`events`)."""
