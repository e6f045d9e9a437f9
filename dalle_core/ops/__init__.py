"""Fused building blocks the models call: the CPU-packed linear layer (`linear`) and the chunked
cross-entropy over a linear head (`losses`)."""
