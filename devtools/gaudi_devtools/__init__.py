"""Developer tools for Gaudi Scale Starter, kept out of the operator image: the embedded
local cluster (`cluster`), the benchmarks (`benchmarks`), the demo (`demo`) and the CRD
installer they share (`crd`). They reach users as `gaudi3 cluster|benchmark|demo`."""
