"""Floor 0: tensor operations, never SAEs. Each family is a package with the plain torch reference
beside its implementations, and a dispatcher that asks dispatch.py which one runs:

    dispatch.py   the one dispatch rule (device, dtype, Triton, the csrc build, STITCHKIT_KERNELS,
                  configure(...)) and the one chunk-size rule (rows_per_chunk)
    tiles.py      shared Triton tile helpers and bf16 error bounds
    encode/       the fused SAE encode and forward: naive.py, kernels.py (Triton), triton.py
    codes/        sparse codes: decode, decoder gradient, co-activation: naive.py, cpu.py, triton.py
    sae_loss/     the fused relu + L1 training loss: naive.py, cpu.py, triton.py
    max_cosine/   max inner product and pairs above a threshold: naive.py, triton.py
    gram/         the Gram of sparse codes on the CPU: naive.py, cpu.py (numba)
    compiled.py   the optional csrc extension (CUDA), where built
Import the family modules directly; the Triton ones import Triton.
"""
