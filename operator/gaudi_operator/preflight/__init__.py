"""`gaudi3 preflight`: is this cluster ready for GaudiTrainingJobs? (docs/gaudi.md)

`checks` decides, purely, from API objects and Prometheus answers; `probe` reads them.
"""
