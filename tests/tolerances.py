"""The tolerances tests compare against, by what is compared (one table; never retyped inline).

KERNEL[dtype]       a kernel against its plain-torch reference, both in `dtype` (fp32 accumulation)
MAX_COSINE[prec]    a max-cosine value searched at that product precision, against float64
EXACT_FP32          two float64-accumulated statistics of the same fp32 products, batched differently
EXACT_FP64          two float64 computations of the same quantity (the library vs a brute force)
"""

import torch

KERNEL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}

MAX_COSINE = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2}
EXACT_FP32 = dict(rel=1e-5)
EXACT_FP64 = dict(rel=1e-9, abs=1e-12)
