"""The one dispatch rule: which implementation a call runs, and how large a chunk may be.

Every caller asks here and none re-decides. What is read: the tensor's device and dtype, whether
Triton is installed and whether it interprets CPU tensors (TRITON_INTERPRET=1, how CI tests the
kernels), whether the optional csrc extension is built, whether FAISS is installed, whether numba
(the CPU kernels' compiler, a declared dependency) imports, whether the CPU has bf16 matrix or
vector units (cpu_has_bf16) or AMX (cpu_has_amx), whether its int8 product is exact and at which
key range (similarity_screen), and STITCHKIT_KERNELS (0 turns every fast path off: the plain torch
references run everywhere).

Routes (`Route`):
    "triton"  Triton kernels: CUDA tensors (or CPU tensors under the interpreter, for tests)
    "cpu"     the CPU fast paths: work on the nonzeros of f (embedding_bag decodes, sparse
              products, numba grams), for the dtypes they were measured with (CPU_DTYPES); on a
              CPU with bf16 units (cpu_has_bf16), fp32 encodes from a bf16 screen (cpu_screen).
              Only where numba imports: stitchkit put on the path of an environment without its
              dependencies (a peer library's, scripts/check_peers.py) runs torch on the CPU
    "torch"   the plain torch reference (also inside torch.autocast: its mixed precision is the
              caller's choice, which the fused paths do not implement)

`settings()` reads the environment at each call (a dict lookup), unless a `configure(...)` block is
active: that is how tests and benchmarks pass configuration in, instead of patching module globals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
from collections.abc import Iterator
from typing import Literal

import torch

Route = Literal["triton", "cpu", "torch"]
SIMILARITY_BACKENDS = ("auto", "torch", "faiss", "triton", "cpu")
# The CPU screens of max cosine / parent links (backend "cpu"): bf16 products (ops.max_cosine.cpu)
# or int8 products (ops.max_cosine.int8_cpu), fp32 deciding among their candidates either way.
CPU_SCREENS = ("bf16", "int8")
# The dtypes the CPU fast paths were measured with (bench/results/cpu_decode_dense_pytest.json).
CPU_DTYPES = (torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class Settings:
    """kernels: fast paths allowed (STITCHKIT_KERNELS != "0"). interpret: Triton runs CPU tensors
    (TRITON_INTERPRET=1). route: force every SAE-level route (e.g. "triton" on CPU tensors under the
    interpreter, to test the fused paths); None decides by device. csrc: override whether the csrc
    extension counts as built (None: whether it is). topk_method: the fused top-k encode's method
    ("filter" or "merge"; None: ops.encode.triton.TOPK_METHOD). fp32_encode: the fused encode's
    arithmetic for fp32 inputs ("screen", "tf32x3", "tf32", "fp32"; None: by width and device,
    ops.encode.triton.default_encode_precision). cpu_bf16: override whether the CPU counts as
    having bf16 matrix or vector units (STITCHKIT_CPU_BF16=0 or 1; None: what cpu_has_bf16()
    reads). key_shards: across ranks, split the key rows of max cosine / parent links into this
    many shards (STITCHKIT_KEY_SHARDS; None: key_shards() decides by memory). cpu_screen: the
    screen max cosine / parent links take on the CPU, "bf16", "int8" or "none"
    (STITCHKIT_CPU_SCREEN; None: similarity_screen's table decides)."""

    kernels: bool = True
    interpret: bool = False
    route: Route | None = None
    csrc: bool | None = None
    topk_method: str | None = None
    fp32_encode: str | None = None
    cpu_bf16: bool | None = None
    key_shards: int | None = None
    cpu_screen: str | None = None


_override: list[dict] = []


def settings() -> Settings:
    base = Settings(
        kernels=os.environ.get("STITCHKIT_KERNELS", "1") != "0",
        interpret=os.environ.get("TRITON_INTERPRET", "0") == "1",
        key_shards=_env_int("STITCHKIT_KEY_SHARDS"),
        cpu_bf16=_env_flag("STITCHKIT_CPU_BF16"),
        cpu_screen=_env_choice("STITCHKIT_CPU_SCREEN", CPU_SCREENS + ("none",)),
    )
    for changes in _override:
        base = dataclasses.replace(base, **changes)
    return base


def _env_flag(name: str) -> bool | None:
    """An environment switch: unset -> None, "0" -> False, anything else -> True."""
    raw = os.environ.get(name, "").strip()
    return None if not raw else raw != "0"


def _env_choice(name: str, choices: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    if raw not in choices:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"{name}={raw!r}: expected a whole number") from None


@contextlib.contextmanager
def configure(**changes) -> Iterator[Settings]:
    """Within the block, settings() has these fields changed (see Settings)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"dispatch.configure: unknown settings {sorted(unknown)}")
    _override.append(changes)
    try:
        yield settings()
    finally:
        _override.remove(changes)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


@functools.cache
def numba_installed() -> bool:
    """Whether numba imports: the CPU fast paths' kernels (ops.*.kernels_cpu) are compiled by it."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX) or vector dot products (AVX-512 BF16), read
    from what the CPU reports (torch's own check where it has one, else /proc/cpuinfo's flags),
    not from its model name."""
    forced = settings().cpu_bf16
    if forced is not None:
        return forced
    if isa_capped_below_bf16():
        return False
    cpu = getattr(torch._C, "_cpu", None)
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, check, None)
        if fn is not None and fn():
            return True
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


# oneDNN's ISA names without bf16 dot products (ONEDNN_MAX_CPU_ISA caps oneDNN at one of them).
ONEDNN_ISAS_WITHOUT_BF16 = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
)  # fmt: skip


def isa_capped_below_bf16() -> bool:
    """Whether this process was told to act as a CPU without bf16 units: torch's kernels capped
    below AVX-512 (ATEN_CPU_CAPABILITY=avx2 or default), or oneDNN capped at an ISA without bf16
    (ONEDNN_MAX_CPU_ISA). CI runs the CPU kernel tests so (scripts/check_isa_caps.py), and the
    fast paths then take the routes such a CPU would."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if not capability.startswith("AVX512"):
        return True
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles and no cap keeps oneDNN below them (ONEDNN_MAX_CPU_ISA names
    an ISA without "AMX")."""
    if isa_capped_below_bf16():
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ("ALL", "DEFAULT") and "AMX" not in cap:
        return False
    fn = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if fn is not None:
        return bool(fn())
    return "amx_tile" in cpu_flags()


def similarity_screen(op: Literal["max", "links"], *, required: bool = False) -> str | None:
    """The screen max cosine ("max") or parent links ("links") take on this CPU: "bf16", "int8" or
    None (no screen: FAISS or torch), by the table of bench/README.md "Every CPU kind", each entry
    measured against the alternatives it skips (bench/cpu_bf16_screen.py):
    - AMX: bf16 for both (3.16x FAISS, 5.9x chunked torch; the int8 screen was not measured there);
    - parent links elsewhere: int8 wherever the CPU's int8 product is exact
      (ops.max_cosine.int8_cpu.int8_key_range: VNNI, or pre-VNNI with half-range keys): 4.6x
      chunked torch on AVX-512 BF16 without AMX, where the bf16 screen gave 2.7x;
    - max cosine elsewhere: bf16 where the CPU has bf16 units (1.7x / 2.0x FAISS at 24,576 x
      12,288 x 384 / 98,304 x 49,152 x 768, where int8 gave 1.9x / 1.3x); else int8 where its
      product is exact with full-range keys (VNNI: 1.9x / 1.2x FAISS, capped to AVX-512 VNNI);
      else no screen (FAISS): with half-range keys the margin lets too many keys through (0.57x).
    Settings.cpu_screen (STITCHKIT_CPU_SCREEN) overrides the table ("none": no screen); so does
    Settings.cpu_bf16 = True (the bf16 screen). With `required` (backend="cpu" asked for by name)
    a screen is always named: the table's, else int8 where its product is exact, else bf16."""
    s = settings()
    if s.cpu_screen is not None:
        picked = None if s.cpu_screen == "none" else s.cpu_screen
    elif s.cpu_bf16:
        picked = "bf16"
    else:
        picked = _screen_by_table(op)
    if picked is None and required:
        from .max_cosine.int8_cpu import int8_key_range

        picked = "int8" if int8_key_range() is not None else "bf16"
    return picked


def _screen_by_table(op: str) -> str | None:
    from .max_cosine.int8_cpu import int8_key_range

    bf16, key_range = cpu_has_bf16(), int8_key_range()
    if bf16 and cpu_has_amx():
        return "bf16"
    if op == "links" and key_range is not None:
        return "int8"
    if bf16:
        return "bf16"
    return "int8" if op == "max" and key_range == 127 else None


def faiss_has_gpu() -> bool:
    if not faiss_installed():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def triton_interpreting() -> bool:
    return settings().interpret


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can take tensors on `device` here."""
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and settings().interpret)


def csrc_available() -> bool:
    """Whether the csrc extension (stitchkit._C) is built and may be used."""
    s = settings()
    if not s.kernels:
        return False
    if s.csrc is not None:
        return s.csrc
    from . import compiled

    return compiled.available()


def op_route(device: torch.device) -> Route:
    """The route of a floor-0 tensor operation (sparse decode, decoder gradient, row dots, the
    fused forward): Triton where it runs on `device`, the CPU fast path on CPU tensors, else torch."""
    s = settings()
    if not s.kernels or _autocasting(device):
        return "torch"
    if triton_runs_on(device):
        return "triton"
    return "cpu" if device.type == "cpu" and numba_installed() else "torch"


def sae_route(device: torch.device, dtype: torch.dtype, *, eval_mode: bool = True) -> Route:
    """The route of an SAE-level computation (SAE.decode, SAE.loss, evaluate, the measurements,
    retrain_decoder): "triton" on CUDA with Triton installed, but only for a computation whose fused
    form is exact in the SAE's current mode (`eval_mode`: false for the eval-mode fused forward of
    an SAE in training mode, whose batchtopk rule differs); "cpu" on CPU tensors of CPU_DTYPES;
    else "torch". Inside torch.autocast for `device`'s type, always "torch": the caller asked for
    autocast's mixed precision, which the fused paths do not implement. The library never routes
    CPU work through the Triton interpreter unless told to (Settings.route)."""
    s = settings()
    if not s.kernels or _autocasting(device):
        return "torch"
    if s.route is not None:
        return s.route if (s.route != "triton" or eval_mode) else "torch"
    if device.type == "cuda" and triton_installed() and eval_mode:
        return "triton"
    if device.type == "cpu" and dtype in CPU_DTYPES and numba_installed():
        return "cpu"
    return "torch"


def _autocasting(device: torch.device) -> bool:
    """Whether a torch.autocast block is active for `device`'s type (bf16/fp16 products there)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def cpu_screen(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether an encode on `device` in `dtype` takes the CPU's bf16 screen (ops.encode.cpu: exact
    fp32 features from bf16 products): fp32 CPU tensors, fast paths allowed (the "cpu" route of
    sae_route), a CPU with bf16 units (cpu_has_bf16). float64 SAEs keep float64 products."""
    return dtype == torch.float32 and sae_route(device, dtype) == "cpu" and cpu_has_bf16()


def similarity_backend(requested: str, device: torch.device, op: Literal["max", "links"] = "max") -> str:
    """The backend max_cosine ("max") / parent_links ("links") run: `requested` checked, or for
    "auto" Triton on CUDA tensors (FAISS-GPU when Triton is missing, else torch), on CPU tensors a
    CPU screen ("cpu") where similarity_screen(op) names one, else FAISS when installed, else
    torch. STITCHKIT_KERNELS=0 makes "auto" the torch reference."""
    from ..errors import InvalidArgumentError

    if requested not in SIMILARITY_BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {SIMILARITY_BACKENDS}, got {requested!r}")
    if requested == "triton" and not triton_installed():
        raise InvalidArgumentError("backend='triton': Triton is not installed")
    if requested == "triton" and not triton_runs_on(device):
        raise InvalidArgumentError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run it on the CPU)"
        )
    if requested == "faiss" and not faiss_installed():
        raise InvalidArgumentError("backend='faiss': faiss is not installed (pip install faiss-cpu)")
    if requested == "cpu" and device.type != "cpu":
        raise InvalidArgumentError("backend='cpu' needs CPU tensors")
    if requested == "cpu" and not numba_installed():
        raise InvalidArgumentError("backend='cpu': numba is not installed (pip install numba)")
    if requested != "auto":
        return requested
    if not settings().kernels:
        return "torch"
    if device.type == "cuda":
        if triton_runs_on(device):
            return "triton"
        return "faiss" if faiss_has_gpu() else "torch"
    if numba_installed() and similarity_screen(op) is not None:
        return "cpu"  # a bf16 or int8 screen, fp32 decides (ops.max_cosine.cpu, .int8_cpu)
    return "faiss" if faiss_installed() else "torch"


# -- memory -----------------------------------------------------------------------------------


def memory_budget(device: torch.device, fraction: float = 0.25) -> int:
    """Bytes a temporary buffer on `device` may take: `fraction` of free memory, capped at 2 GiB
    on a GPU (larger matmuls gain nothing there) and 256 MiB on the CPU (BLAS is at full rate
    long before that, and a laptop's memory is shared)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = 2 << 30
    else:
        free = available_host_memory()
        cap = 256 << 20
    return max(1 << 20, min(int(free * fraction), cap))


def stage_memory(device: torch.device) -> int:
    """Bytes a stage's resident structures (a dense Gram, normal equations, kept codes) may take on
    `device`: half of what is free now. A stage whose dense form needs more takes another
    algorithm (fit.retrain.lstsq_solver)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return available_host_memory() // 2


def rows_per_chunk(bytes_per_row: int, device: torch.device) -> int:
    """How many rows of `bytes_per_row` bytes each a temporary may hold within memory_budget: the
    one chunk-size rule of every chunked loop (tokens, query rows, feature pairs)."""
    return max(1, memory_budget(device) // max(int(bytes_per_row), 1))


def available_host_memory() -> int:
    """Bytes of host memory available now (MemAvailable; 4 GiB where /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def key_shards(key_bytes: int, device: torch.device, world: int) -> int:
    """Across `world` ranks, how many shards the key rows of a similarity search are split into:
    Settings.key_shards when set (it must divide world), else the fewest (a divisor of world) whose
    share of `key_bytes` (the search's copies of the keys) takes at most half the memory free to one
    rank: the GPU's free memory, or on the CPU the host's available memory over the ranks that share
    it (LOCAL_WORLD_SIZE). Ranks then form a grid of world / shards query groups by shards."""
    from ..errors import InvalidArgumentError

    forced = settings().key_shards
    if forced is not None:
        if forced < 1 or world % forced:
            raise InvalidArgumentError(
                f"key_shards (STITCHKIT_KEY_SHARDS) = {forced}: expected a divisor of the world size {world}"
            )
        return forced
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_host_memory() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    for p in range(1, world + 1):
        if world % p == 0 and key_bytes / p <= free / 2:
            return p
    return world
