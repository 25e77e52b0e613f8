"""The ticket kinds params.yaml can name, one module each (structlth.pruning.registry.KINDS):
refill and regroup post-process an unstructured mask; torch_pruning is the field's structured
baseline at a ticket's FLOPs."""
