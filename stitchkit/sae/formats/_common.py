"""What every format reader shares: reading JSON, safetensors, numpy and torch files with errors
that name the file, and `SAEFile`, the one description every reader returns.

A reader maps its library's file onto stitchkit's SAE exactly: pre = (x - b_dec) W_enc + b_enc (or
x W_enc + b_enc), f = activation(pre), x_hat = b_dec + f W_dec. Where a library computes the same
function in another form (a gated encoder, a decoder-norm rescale, a constant input scale), the
reader rewrites the weights into this one (in float64, then the file's dtype) and says so in
`SAEFile.notes`. What cannot be rewritten exactly is refused with an UnsupportedError saying why.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import SAEFormatError, UnsupportedError
from ..model import INPUT_NORMS  # noqa: F401  (re-exported: the norms a file may state)

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class SAEFile:
    """One SAE as read from a file, in stitchkit's form (see the module doc).

    tensors: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], and threshold
    ([d_sae] for jumprelu, [] or [d_sae] equal values for batchtopk) where the activation has one.
    `where` names the weights file for error messages; `notes` says what was rewritten or stated.
    """

    format: str
    where: str
    d_in: int
    d_sae: int
    activation: str
    tensors: dict[str, torch.Tensor]
    k: int | None = None
    hook_name: str | None = None
    apply_b_dec_to_input: bool = True
    dtype: torch.dtype | None = None  # None: the weights' own dtype
    l1_coefficient: float = 0.0
    input_norm: str = "none"
    name: str | None = None
    notes: list[str] = field(default_factory=list)
    report: LoadReport | None = None  # set by formats.read


class Fields(dict):
    """A config object or a state dict as read from a file, remembering which keys its reader
    consulted (get, [], in), so the load report can list what was read and what was not."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.consulted: set = set()

    def __getitem__(self, key):
        self.consulted.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.consulted.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.consulted.add(key)
        return super().__contains__(key)


# (file, Fields, "field" or "tensor") of every file read while formats.read records.
_SEEN: contextvars.ContextVar[list | None] = contextvars.ContextVar("stitchkit_formats_seen", default=None)


@contextlib.contextmanager
def recording():
    """Collects what the readers called inside read (read_json, read_safetensors, read_torch,
    read_npz) as (file, Fields, kind)."""
    seen: list = []
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


def _seen(path: Path, obj: Fields, kind: str) -> Fields:
    seen = _SEEN.get()
    if seen is not None:
        seen.append((str(path), obj, kind))
    return obj


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split(obj: Fields, prefix: str = "") -> tuple[dict[str, str], list[str]]:
    """(read: name -> short value, unread names) of a Fields tree; a nested object counts as read
    where its reader looked inside it."""
    read, unread = {}, []
    for key, value in dict.items(obj):
        name = f"{prefix}{key}"
        if key not in obj.consulted:
            unread.append(name)
        elif isinstance(value, Fields) and value.consulted:
            r, u = _split(value, name + ".")
            read.update(r)
            unread.extend(u)
        else:
            read[name] = _short(value)
    return read, unread


@dataclass
class LoadReport:
    """What one load read and did: the layout, the files, each config field and tensor read (with
    its value or shape), those present but not read, the rewrites made, and the code the layout's
    reader is checked against (its writer, or the writer's own loader)."""

    format: str
    oracle: str
    files: list[str]
    fields: dict[str, str]
    unread_fields: list[str]
    tensors: dict[str, str]
    unread_tensors: list[str]
    rewrites: list[str]
    not_read: tuple[str, ...] = ()  # fields and tensors the format declares it does not need

    @classmethod
    def of(cls, fmt, f: SAEFile, seen: list) -> LoadReport:
        files, fields, tensors, unread_f, unread_t = [], {}, {}, [], []
        for path, obj, kind in seen:
            if path not in files:
                files.append(path)
            read, unread = _split(obj)
            (fields if kind == "field" else tensors).update(read)
            (unread_f if kind == "field" else unread_t).extend(unread)
        return cls(
            format=f.format,
            oracle=getattr(fmt, "ORACLE", "none named"),
            files=files,
            fields=fields,
            unread_fields=sorted(set(unread_f) - set(fields)),  # a file read twice: read once is read
            tensors=tensors,
            unread_tensors=sorted(set(unread_t) - set(tensors)),
            rewrites=list(f.notes),
            not_read=tuple(getattr(fmt, "NOT_READ", ())),
        )

    def _known(self, name: str) -> bool:
        """Whether the format names `name` (or its last part, or a prefix of it) as not needed."""
        return any(name == n or name.endswith("." + n) or name.startswith(n + ".") for n in self.not_read)

    @property
    def unknown_fields(self) -> list[str]:
        """Fields present and not read that the format does not name as not needed: a field this
        version of stitchkit does not know (a newer writer's, or a typo)."""
        return [k for k in self.unread_fields if not self._known(k)]

    @property
    def unknown_tensors(self) -> list[str]:
        """Tensors present and not read that the format does not name as not needed."""
        return [k for k in self.unread_tensors if not self._known(k)]

    def text(self) -> str:
        lines = [f"format {self.format}; checked against {self.oracle}"]
        lines += [f"  file   {p}" for p in self.files]
        lines += [f"  field  {k} = {v}" for k, v in self.fields.items()]
        lines += [f"  tensor {k} {v}" for k, v in self.tensors.items()]
        lines += [f"  rewrite {n}" for n in self.rewrites]
        unknown = self.unknown_fields + self.unknown_tensors
        known = [k for k in self.unread_fields + self.unread_tensors if k not in unknown]
        if known:
            lines.append("  not read (training only, or no effect on the features): " + ", ".join(known))
        if unknown:
            lines.append("  NOT READ, unknown to this reader: " + ", ".join(unknown))
        return "\n".join(lines)


def read_json(path: Path) -> Fields:
    try:
        text = path.read_text()
    except OSError as e:
        raise SAEFormatError(f"{path}: cannot read ({e.strerror})") from e
    try:
        cfg = json.loads(text, object_hook=Fields)
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return _seen(path, cfg, "field")


def read_safetensors(path: Path) -> tuple[Fields, dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise SAEFormatError(f"{path}: weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = Fields({k: f.get_tensor(k) for k in f.keys()})
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise SAEFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    return _seen(path, tensors, "tensor"), meta


def read_torch(path: Path) -> Fields:
    """A pickled state dict (.pt/.pth), read with torch.load(weights_only=True): tensors and plain
    values only, so the file cannot run code."""
    if not path.is_file():
        raise SAEFormatError(f"{path}: weights file is missing")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for truncation
        raise SAEFormatError(
            f"{path}: not a readable weights-only torch file (truncated, or it holds objects "
            f"that would run code, which stitchkit never loads): {_first_line(e)}"
        ) from e
    if not isinstance(obj, dict):
        raise SAEFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return _seen(path, _as_fields(obj), "tensor")


def _as_fields(obj: dict) -> Fields:
    return Fields({k: _as_fields(v) if isinstance(v, dict) else v for k, v in obj.items()})


def _first_line(e: Exception) -> str:
    return ((str(e).splitlines() or [""])[0] or type(e).__name__)[:200]


def read_npz(path: Path) -> Fields:
    import numpy as np

    if not path.is_file():
        raise SAEFormatError(f"{path}: weights file is missing")
    try:
        with np.load(str(path), allow_pickle=False) as data:
            tensors = Fields({k: torch.from_numpy(np.array(data[k])) for k in data.files})
    except Exception as e:  # BadZipFile, ValueError (pickled arrays), OSError
        raise SAEFormatError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from e
    return _seen(path, tensors, "tensor")


def parse_dtype(value: Any, where: str) -> torch.dtype:
    key = str(value).removeprefix("torch.")
    if key not in DTYPES:
        raise SAEFormatError(f"{where}: dtype {value!r} is unknown, expected one of {sorted(DTYPES)}")
    return DTYPES[key]


def int_field(cfg: dict, key: str, where: str, value: Any = None) -> int:
    value = cfg.get(key) if value is None else value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SAEFormatError(f"{where}: field {key!r} must be a positive integer, found {value!r}")
    return value


def tensor(tensors: dict, key: str, where: str, aliases: tuple[str, ...] = ()) -> torch.Tensor:
    """tensors[key] (or the first alias present), checked to be a floating-point tensor."""
    for k in (key, *aliases):
        if k in tensors:
            t = tensors[k]
            if not isinstance(t, torch.Tensor):
                raise SAEFormatError(f"{where}: {k!r} is a {type(t).__name__}, expected a tensor")
            if not t.is_floating_point():
                raise SAEFormatError(f"{where}: tensor {k!r} has dtype {t.dtype}, expected floating point")
            return t
    found = sorted(k for k in tensors if isinstance(k, str))
    raise SAEFormatError(f"{where}: tensor {key!r} is missing (found {found})")


@dataclass(frozen=True)
class Defaults:
    """A writer's config defaults: a field a file leaves out, or sets to null, takes its default;
    flag and number check the value's type and name the field when it is wrong."""

    values: dict[str, Any]

    def get(self, cfg: dict, key: str) -> Any:
        value = cfg.get(key)
        return self.values[key] if value is None else value

    def flag(self, cfg: dict, key: str, where: str) -> bool:
        value = self.get(cfg, key)
        if not isinstance(value, bool):
            raise SAEFormatError(f"{where}: field {key!r} must be true or false, found {value!r}")
        return value

    def number(self, cfg: dict, key: str, where: str) -> float:
        value = self.get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SAEFormatError(f"{where}: field {key!r} must be a finite number, found {value!r}")
        return float(value)


def shaped_tensor(tensors: dict, key: str, shape: tuple[int, ...], where: str, sizes: str) -> torch.Tensor:
    """tensors[key] (checked as `tensor` does) of exactly `shape`, in float64; `sizes` says where
    the expected shape comes from, for the error."""
    v = tensor(tensors, key, where)
    if tuple(v.shape) != shape:
        raise SAEFormatError(
            f"{where}: tensor {key!r} has shape {tuple(v.shape)}, expected {shape} ({sizes})"
        )
    return v.double()


def dims(t: torch.Tensor, rank: int, key: str, where: str) -> tuple[int, ...]:
    if t.dim() != rank:
        raise SAEFormatError(
            f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {rank} dimensions"
        )
    return tuple(t.shape)


def scalar_k(value: Any, where: str, key: str = "k") -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise SAEFormatError(f"{where}: {key!r} must be one integer, found shape {tuple(value.shape)}")
        value = value.item()
    return int_field({key: value}, key, where)


def fold_input_scale(t: dict[str, torch.Tensor], c: float) -> None:
    """An SAE that reads c * x and whose output is divided by c, rewritten to read x:
    W_enc *= c, W_dec /= c, b_dec /= c (b_enc and thresholds unchanged), as SAELens folds it."""
    if not (math.isfinite(c) and c > 0):
        raise UnsupportedError(f"the input scaling factor must be finite and > 0, found {c!r}")
    t["W_enc"] = t["W_enc"].double() * c
    t["W_dec"] = t["W_dec"].double() / c
    t["b_dec"] = t["b_dec"].double() / c


def fold_decoder_norm(t: dict[str, torch.Tensor]) -> None:
    """An SAE whose pre-activations are multiplied by |W_dec_j| and whose decoder rows are unit
    normalised at use, rewritten with those norms folded into the weights (thresholds are already in
    the rescaled units): W_enc[:, j] *= n_j, b_enc[j] *= n_j, W_dec[j] /= n_j."""
    n = t["W_dec"].double().norm(dim=1)
    t["W_enc"] = t["W_enc"].double() * n
    t["b_enc"] = t["b_enc"].double() * n
    t["W_dec"] = t["W_dec"].double() / n[:, None]


def gated_as_jumprelu(W_enc, b_gate, b_mag, r_mag) -> dict[str, torch.Tensor]:
    """A gated encoder f = 1[x W + b_gate > 0] * ReLU(x (W * e^r) + b_mag) as a JumpReLU of the
    magnitude path: with s = e^r > 0, x W + b_gate > 0 <=> pre_mag > b_mag - s * b_gate, so
    f = ReLU(pre_mag) * (pre_mag > theta) with theta = max(b_mag - s * b_gate, 0). Identical but
    for rounding at the gate's boundary."""
    s = r_mag.double().exp()
    theta = (b_mag.double() - s * b_gate.double()).clamp_min(0)
    return {"W_enc": W_enc.double() * s, "b_enc": b_mag.double(), "threshold": theta}
