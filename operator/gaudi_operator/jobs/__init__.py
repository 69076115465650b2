"""A job and its children: what a pass sees (`observation`), the level-based decision
(`plan`), the Service, worker Pod and PodGroup manifests (`manifests`), the effects of a
pass (`reconciler`) and the kopf indices and wake-ups (`wiring`)."""
