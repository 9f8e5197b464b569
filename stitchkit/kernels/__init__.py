"""Floor 0: Triton kernels beside their plain-torch references, and the dispatch rule.
Kernels take tensors, never SAEs. Import the family modules directly (they import Triton)."""
