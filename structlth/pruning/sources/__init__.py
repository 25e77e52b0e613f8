"""Where a ticket's unstructured mask comes from before refill or regroup (the paper's Fig. 6,
left): an IMP round, or one of the one-shot pruners here, each at the density of that round and
each in its own module (structlth.pruning.registry.SOURCES):

- omp: one-shot global magnitude pruning of the trained dense net;
- random: every layer keeps the same share of its weights, drawn uniformly (seeded);
- snip (Lee et al., ICLR 2019): at initialisation, the global top-k of the connection
  sensitivity |w * dL/dw| on a few training batches;
- synflow (Tanaka et al., NeurIPS 2020): data-free, at initialisation, pruned to the density
  over several rounds of rescoring.

No maintained package provides SNIP or SynFlow masks for an arbitrary nn.Module (Torch-Pruning
scores channel groups, not single weights), so both are written here to their papers'
definitions; tests check them on nets small enough to score by hand.
"""
