"""The SAE: encoder, activation, decoder, loss, and the stitching constructor `from_features`.

Conventions (SAELens): W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
Pre-activation: (x - b_dec) W_enc + b_enc when `apply_b_dec_to_input`, else x W_enc + b_enc.

Units, used everywhere in stitchkit:
- MSE: squared error summed over d_in, mean over tokens.
- normalised MSE: MSE / mean over tokens of |x - mean(x)|^2 (fraction of variance unexplained).
- L0: number of non-zero features per token, mean over tokens.
- L1: l1_coefficient * sum of features per token, mean over tokens (features are non-negative).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgumentError, ShapeError, UnsupportedError
from ..ops.dispatch import cpu_screen, sae_route
from .activations import Activation, make_activation
from .provenance import Provenance


class _FeatureSlices:
    """The encoder's columns for a feature index tensor, kept while that tensor, the SAE and its
    encoder's version live: a measurement asks for the same features chunk after chunk, and the
    screen caches its bf16 form per encoder tensor (ops.encode.cpu._encoder), so a fresh slice
    each chunk rebuilt that form every time (about 30% of a dMSE pass at 49,152 + 98,304)."""

    def __init__(self):
        self.entries: dict[tuple[int, int], tuple] = {}

    def get(self, sae: SAE, features: torch.Tensor, cut: torch.Tensor):
        key = (id(sae), id(features))
        th = sae.threshold
        stamp = (sae.W_enc._version, sae.W_enc.data_ptr(), sae.b_enc._version, sae.b_enc.data_ptr(),
                 None if th is None else (th._version, th.data_ptr()))  # fmt: skip
        hit = self.entries.get(key)
        if hit is not None and hit[0]() is sae and hit[1]() is features and hit[2] == stamp:
            return hit[3]
        sliced = (sae.W_enc.detach()[:, features], sae.b_enc.detach()[features], cut[features])
        drop = lambda _, key=key: self.entries.pop(key, None)  # noqa: E731
        self.entries[key] = (weakref.ref(sae, drop), weakref.ref(features, drop), stamp, sliced)
        return sliced


_SLICES = _FeatureSlices()


@dataclass
class SAELoss:
    """Scalar tensors for one batch: mse (summed over d_in, mean over tokens), l1
    (l1_coefficient * sum f, mean over tokens), l0 (mean active features per token) and
    total = mse + l1, the reference work's training objective. l0 carries no gradient."""

    mse: torch.Tensor
    l1: torch.Tensor
    l0: torch.Tensor
    total: torch.Tensor
    fired: torch.Tensor | None = None  # bool [d_sae]: features active on some token (None: not computed)


class SAE(nn.Module):
    """A sparse autoencoder with one of the activations of stitchkit.sae.activations (relu, topk,
    batchtopk, jumprelu): `act` is its Activation object, `activation` its name, `k` its k.

    A new SAE is in eval mode (stitching is inference); call .train() to train it.
    Each feature carries provenance (source name, source index), see `provenance`.
    """

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    threshold: torch.Tensor | None

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        activation: str = "relu",
        *,
        k: int | None = None,
        l1_coefficient: float = 0.0,
        hook_name: str | None = None,
        apply_b_dec_to_input: bool = True,
        name: str = "sae",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        init: bool = True,
        input_norm: str = "none",
    ) -> None:
        """init=False leaves the weights uninitialised (for loaders that fill them at once).
        input_norm states a per-token normalisation the SAE was trained behind ("none",
        "layer_norm", "unit_norm": see normalize_input); the SAE's methods work in that
        normalised space, and measurements refuse an SAE that states one (normalise the
        activations with normalize_input and use sae.in_normalized_space())."""
        super().__init__()
        if not isinstance(d_in, int) or d_in < 1:
            raise InvalidArgumentError(f"SAE: d_in must be a positive int, got {d_in!r}")
        if not isinstance(d_sae, int) or d_sae < 0:
            raise InvalidArgumentError(f"SAE: d_sae must be a non-negative int, got {d_sae!r}")
        try:
            act = make_activation(activation, k)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"SAE: {e}") from None
        if l1_coefficient < 0:
            raise InvalidArgumentError(f"SAE: l1_coefficient must be >= 0, got {l1_coefficient}")
        self.d_in, self.d_sae = d_in, d_sae
        self.act: Activation = act
        self.l1_coefficient = float(l1_coefficient)
        self.hook_name = hook_name
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.name = name
        if input_norm not in INPUT_NORMS:
            raise InvalidArgumentError(f"SAE: input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        self.source_format: str | None = None  # the file layout load_sae read it from
        self.load_notes: list[str] = []  # what load_sae rewrote or stated (formats.SAEFile.notes)
        self.load_report = None  # formats.LoadReport of the load, where load_sae read a file

        # Decoder rows of unit norm, encoder initialised as the decoder's transpose.
        if init:
            w = torch.randn(d_sae, d_in, generator=generator, dtype=torch.float32)
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.W_dec = nn.Parameter(w.to(dtype=dtype, device=device))
            self.W_enc = nn.Parameter(w.t().contiguous().to(dtype=dtype, device=device))
        else:
            self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, dtype=dtype, device=device))
            self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        if act.threshold_shape is None:
            self.threshold = None
        else:
            shape = (d_sae,) if act.threshold_shape == "feature" else ()
            self.register_buffer("threshold", torch.zeros(shape, dtype=dtype, device=device))
        self.provenance = Provenance.identity(name, d_sae)
        self.eval()

    # -- the forward pass -------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor, what: str = "x") -> None:
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ShapeError(
                f"SAE {self.name!r}: {what} has shape {tuple(x.shape)}, expected [..., {self.d_in}]"
            )

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: x [..., d_in] in the SAE's dtype, less b_dec when
        `apply_b_dec_to_input`."""
        self._check_input(x)
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_activation(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., d_in] -> pre-activations [..., d_sae] (or [..., m] of `features`, int64 [m]),
        in the SAE's dtype."""
        x = self.encoder_input(x)
        W, b = (
            (self.W_enc, self.b_enc) if features is None else (self.W_enc[:, features], self.b_enc[features])
        )
        # The bias as the product's starting value (one pass over the [n, d_sae] result, not two).
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).reshape(*x.shape[:-1], W.shape[1])

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function applied to pre-activations [..., d_sae]."""
        return self.act.activate(pre, self.threshold, self.training)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> features f [..., d_sae] (non-negative), in the SAE's dtype. Where no
        gradient is needed and the CPU's bf16 screen applies (see `codes`), f is built from its
        nonzeros, each the fp32 pre-activation exactly rounded."""
        nz = self.codes(x)
        if nz is not None:
            from ..ops.codes.cpu import dense_from_nonzeros

            return dense_from_nonzeros(nz, self.d_sae).reshape(*x.shape[:-1], self.d_sae)
        return self.activate(self.pre_activation(x))

    def codes(self, x: torch.Tensor, features: torch.Tensor | None = None):
        """The nonzeros of encode(x) (or of encode_features(x, features)) as
        ops.codes.cpu.Nonzeros over x's tokens [..., d_in] flattened, computed without the dense
        features by the CPU's bf16 screen (ops.encode.cpu: bf16 products rule features out, fp32
        decides the rest; ops.dispatch.cpu_screen says where it runs) for an activation with a
        per-feature cut (relu, jumprelu, batchtopk in eval mode). None where the screen does not
        apply (another device or dtype, topk, a gradient needed) or leaves too many candidates."""
        cut = self._screen_cut()
        if cut is None or not cpu_screen(x.device, self.dtype) or self._needs_grad(x):
            return None
        from ..ops.encode.cpu import screened_codes_cpu

        xin = self.encoder_input(x).reshape(-1, self.d_in)
        if features is None:
            return screened_codes_cpu(xin, self.W_enc, self.b_enc, cut)
        W, b, c = _SLICES.get(self, features, cut)
        return screened_codes_cpu(xin, W, b, c)

    def _screen_cut(self) -> torch.Tensor | None:
        """Per feature [d_sae], the value a pre-activation must pass to be a feature (relu: 0;
        jumprelu, batchtopk in eval mode: max(threshold, 0)); None for an activation without one."""
        if self.act.kernel_k() is not None or self.act.couples_features(self.training):
            return None
        th = self.act.kernel_threshold(self.threshold, self.d_sae)
        return torch.zeros(self.d_sae) if th is None else th.detach().float().clamp_min(0)

    def _needs_grad(self, x: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in (self.W_enc, self.b_enc, self.b_dec))

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> the features `features` (int64 [m]) only, [..., m], each with its
        value in encode(x): bit for bit where the CPU's bf16 screen runs (each pre-activation
        rounded once from float64) or the activation couples features; otherwise within fp32
        rounding (a BLAS may sum an [n, m] product in another order than the [n, d_sae] one:
        AMD EPYC's fp32 kernels do). Computes just those m columns unless the activation
        couples features (topk, batchtopk in training)."""
        if self.act.couples_features(self.training):
            return self.encode(x)[..., features]
        nz = self.codes(x, features)
        if nz is not None:
            from ..ops.codes.cpu import dense_from_nonzeros

            return dense_from_nonzeros(nz, len(features)).reshape(*x.shape[:-1], len(features))
        pre = self.pre_activation(x, features)
        th = None if self.threshold is None else self.threshold.expand(self.d_sae)[features]
        return self.act.activate_columns(pre, th)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f [..., d_sae] -> x_hat [..., d_in] = b_dec + f W_dec. On the CPU, an f that needs no
        gradient and is sparse (ops.codes.cpu.DENSE_DECODE_MAX_DENSITY) is decoded from its
        nonzeros alone (decode_via_nonzeros), on the "cpu" route of ops.dispatch.sae_route."""
        if f.dim() < 1 or f.shape[-1] != self.d_sae:
            raise ShapeError(
                f"SAE {self.name!r}: features have shape {tuple(f.shape)}, expected [..., {self.d_sae}]"
            )
        no_grad = not (f.requires_grad and torch.is_grad_enabled())
        if no_grad and sae_route(f.device, self.dtype) == "cpu":
            from ..ops.codes.cpu import decode_via_nonzeros

            x_hat = decode_via_nonzeros(f, self.W_dec, self.b_dec)  # None where f is too dense
            if x_hat is not None:
                return x_hat
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> reconstruction x_hat [..., d_in]."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor) -> SAELoss:
        """MSE, L1, L0 and total = MSE + L1 over a batch x [n, d_in] (units: see module doc).
        An activation with a fused loss (relu) takes ops.sae_loss on its route (ops.dispatch.sae_route):
        the sparse fused kernels on "triton", the loss whose backward works on f's nonzeros on "cpu"."""
        self._check_input(x)
        if self.act.fused_loss and x.dtype == self.dtype:
            args = (
                x,
                self.W_enc,
                self.b_enc,
                self.W_dec,
                self.b_dec,
                self.l1_coefficient,
                self.apply_b_dec_to_input,
            )
            route = sae_route(x.device, self.dtype)
            if route == "cpu" and x.dim() == 2:
                from ..ops.sae_loss.cpu import relu_sae_loss_cpu

                mse, l1, l0, fired = relu_sae_loss_cpu(*args)
                return SAELoss(mse=mse, l1=l1, l0=l0, total=mse + l1, fired=fired)
            if route == "triton":
                from ..ops.sae_loss.triton import relu_sae_loss

                mse, l1, l0 = relu_sae_loss(*args)
                return SAELoss(mse=mse, l1=l1, l0=l0, total=mse + l1)
        f = self.encode(x)
        err = (self.decode(f) - x.to(self.W_dec.dtype)).float()
        mse = err.pow(2).sum(-1).mean()
        l1 = self.l1_coefficient * f.float().sum(-1).mean()
        active = f.detach() != 0
        l0 = active.float().sum(-1).mean()
        return SAELoss(mse=mse, l1=l1, l0=l0, total=mse + l1, fired=active.reshape(-1, self.d_sae).any(0))

    def sparse_forward(self, x: torch.Tensor):
        """The fused Triton forward of this SAE in eval mode on a batch x [n, d_in]: per-token
        squared error, L1, L0 and the sparse codes (ops.encode.ForwardStats)."""
        from ..ops.encode.triton import sae_forward_triton

        th = self.act.kernel_threshold(self.threshold, self.d_sae)
        return sae_forward_triton(
            x,
            self.W_enc.detach(),
            self.b_enc.detach(),
            self.W_dec.detach(),
            self.b_dec.detach(),
            None if th is None else th.detach(),
            self.apply_b_dec_to_input,
            k=self.act.kernel_k(),
        )

    # -- shape and identity -----------------------------------------------------------------

    @property
    def activation(self) -> str:
        """The activation's name (a key of sae.activations.ACTIVATIONS)."""
        return self.act.name

    @property
    def k(self) -> int | None:
        return self.act.k

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def set_provenance(self, provenance: Provenance) -> None:
        if len(provenance) != self.d_sae:
            raise ShapeError(
                f"SAE {self.name!r}: provenance has {len(provenance)} entries, expected d_sae = {self.d_sae}"
            )
        self.provenance = provenance

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"name={self.name!r}, d_in={self.d_in}, d_sae={self.d_sae}, {self.activation}{k}"

    @classmethod
    def from_module(cls, obj, *, name: str | None = None) -> SAE:
        """An SAE (a copy of its weights) from one a peer library has loaded: a SAELens SAE, a
        sparsify SparseCoder, a dictionary_learning dictionary or a llamascopium SparseAutoEncoder
        (stitchkit.peers.from_module)."""
        from ..peers import from_module

        return from_module(obj, name=name)

    def in_normalized_space(self) -> SAE:
        """This SAE with input_norm "none" (sharing its weights): the SAE to measure on activations
        already normalised with normalize_input(x, self.input_norm)."""
        out = copy.copy(self)
        out.input_norm = "none"
        return out

    # -- stitching --------------------------------------------------------------------------

    def effective_b_dec_shift(self) -> torch.Tensor:
        """The vector subtracted from x before the encoder: b_dec, or zeros."""
        return self.b_dec if self.apply_b_dec_to_input else torch.zeros_like(self.b_dec)

    @classmethod
    def from_features(
        cls,
        parts: Sequence[tuple[SAE, Sequence[int] | torch.Tensor]],
        *,
        base: SAE,
        name: str | None = None,
    ) -> SAE:
        """Build an SAE from rows of several SAEs with the same d_in.

        parts: [(sae, feature indices)], features taken in that order (encoder column,
               encoder bias, decoder row, threshold, provenance).
        base:  the SAE whose b_dec the stitched SAE decodes with (and subtracts at its input).

        Each feature's activation stays exactly its value in its source SAE: the difference
        between the source's input shift and the base's is folded into the feature's encoder
        bias, b'_j = b_j + (b_dec_base - b_dec_source) . W_enc[:, j] (computed in float64).
        So SAE*(x) = b_dec_base + sum_j f_source,j(x) W_dec_source,j. Mixing relu, jumprelu
        and batchtopk (eval) gives a jumprelu SAE (relu is threshold 0); an activation without
        such a form (topk: Activation.stitch_threshold) raises UnsupportedError.
        """
        if not parts:
            raise InvalidArgumentError("SAE.from_features: parts is empty, expected [(sae, indices)]")
        kinds = set()
        for i, (sae, _) in enumerate(parts):
            if not isinstance(sae, SAE):
                raise InvalidArgumentError(
                    f"SAE.from_features: parts[{i}][0] is {type(sae).__name__}, expected SAE"
                )
            check_same_input(sae, base, f"SAE.from_features: parts[{i}]")
            try:
                sae.act.stitch_threshold(sae.threshold, sae.d_sae)
            except UnsupportedError as e:
                raise UnsupportedError(
                    f"SAE.from_features: parts[{i}] SAE {sae.name!r} is {sae.activation}; {e}"
                ) from None
            kinds.add(sae.activation)
        activation = "relu" if kinds == {"relu"} else "jumprelu"

        dtype, device = base.dtype, base.device
        shift_new = base.effective_b_dec_shift().detach().double()
        W_enc, b_enc, W_dec, thresholds, provs = [], [], [], [], []
        for i, (sae, idx) in enumerate(parts):
            idx_t = feature_index(sae, idx, f"SAE.from_features: parts[{i}]", allow_empty=True)
            w_enc = sae.W_enc.detach()[:, idx_t].double()
            delta = shift_new.to(sae.device) - sae.effective_b_dec_shift().detach().double()
            b = sae.b_enc.detach()[idx_t].double() + delta @ w_enc
            W_enc.append(w_enc.to(dtype=dtype, device=device))
            b_enc.append(b.to(dtype=dtype, device=device))
            W_dec.append(sae.W_dec.detach()[idx_t].to(dtype=dtype, device=device))
            th = sae.act.stitch_threshold(sae.threshold, sae.d_sae).to(sae.device)[idx_t]
            thresholds.append(th.to(dtype=dtype, device=device))
            provs.append(sae.provenance.select(idx_t.cpu()))

        d_sae = sum(len(w) for w in W_dec)
        if d_sae == 0:
            raise InvalidArgumentError("SAE.from_features: every part selects no feature")
        out = cls(
            base.d_in,
            d_sae,
            activation,
            l1_coefficient=base.l1_coefficient,
            hook_name=base.hook_name,
            apply_b_dec_to_input=base.apply_b_dec_to_input,
            name=name or f"stitched({base.name})",
            dtype=dtype,
            device=device,
            input_norm=base.input_norm,
        )
        with torch.no_grad():
            out.W_enc.copy_(torch.cat(W_enc, dim=1))
            out.b_enc.copy_(torch.cat(b_enc))
            out.W_dec.copy_(torch.cat(W_dec))
            out.b_dec.copy_(base.b_dec.detach())
            if out.threshold is not None:
                out.threshold.copy_(torch.cat(thresholds))
        out.set_provenance(Provenance.concat(provs))
        return out

    def select(self, features: Sequence[int] | torch.Tensor, name: str | None = None) -> SAE:
        """A new SAE with only `features` (in that order), keeping their provenance."""
        if self.act.couples_features(training=False):
            raise UnsupportedError(
                f"SAE {self.name!r}: selecting features of a {self.activation} SAE changes their values"
            )
        return SAE.from_features([(self, features)], base=self, name=name or self.name)


INPUT_NORMS = ("none", "layer_norm", "unit_norm")


def normalize_input(x: torch.Tensor, kind: str, eps: float = 1e-5):
    """The per-token input normalisation `kind` of x [..., d_in]: (x_normalised, mean, scale); a
    reconstruction maps back as x_hat * scale + mean, as the libraries that train behind these
    norms map it back.
        layer_norm  (x - mean) / (std + eps), std unbiased, scale = std without eps (SAELens
                    "layer_norm", OpenAI's LN and BatchTopK's input_unit_norm all undo with std)
        unit_norm   x * sqrt(d_in) / |x| (SAELens "constant_norm_rescale"); mean 0
        none        x itself"""
    if kind == "none":
        return x, torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if kind == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + eps), mu, std
    if kind == "unit_norm":
        scale = x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5
        return x / scale, torch.zeros_like(scale), scale
    raise InvalidArgumentError(f"normalize_input: kind must be one of {INPUT_NORMS}, got {kind!r}")


def check_same_input(a: SAE, b: SAE, fn: str) -> None:
    """Raise unless `a` and `b` read the same input: same d_in, the same input normalisation, and
    the same hook when both name one."""
    if a.input_norm != b.input_norm:
        raise InvalidArgumentError(
            f"{fn}: SAE {a.name!r} reads input_norm={a.input_norm!r} but SAE {b.name!r} reads "
            f"{b.input_norm!r}"
        )
    if a.d_in != b.d_in:
        raise ShapeError(f"{fn}: SAE {a.name!r} has d_in={a.d_in} but SAE {b.name!r} has d_in={b.d_in}")
    if a.hook_name and b.hook_name and a.hook_name != b.hook_name:
        raise InvalidArgumentError(
            f"{fn}: SAE {a.name!r} reads hook {a.hook_name!r} but SAE {b.name!r} reads {b.hook_name!r}"
        )


def feature_index(sae: SAE, features, what: str, *, allow_empty: bool = False) -> torch.Tensor:
    """`features` (None = all, a sequence or an int64 tensor) as int64 [m] on the SAE's device,
    checked to lie in [0, d_sae)."""
    if features is None:
        return torch.arange(sae.d_sae, device=sae.device)
    idx = torch.as_tensor(features, dtype=torch.int64).reshape(-1).to(sae.device)
    if not allow_empty and len(idx) == 0:
        raise InvalidArgumentError(f"{what}: the feature list for SAE {sae.name!r} is empty")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= sae.d_sae):
        raise InvalidArgumentError(
            f"{what}: indices must lie in [0, {sae.d_sae}) for SAE {sae.name!r}, "
            f"found [{int(idx.min())}, {int(idx.max())}]"
        )
    return idx


def is_every_feature(sae: SAE, idx: torch.Tensor) -> bool:
    """Whether `idx` (int64, from feature_index) is all of sae's features in order: then sae's
    whole tensors serve, with no gathered copy."""
    return len(idx) == sae.d_sae and bool((idx == torch.arange(sae.d_sae, device=idx.device)).all())


def family_order(family: Sequence[SAE]) -> list[SAE]:
    """`family` sorted by width, checked to share d_in and hook."""
    if not family:
        raise InvalidArgumentError("family: expected at least one SAE, got none")
    ordered = sorted(family, key=lambda s: s.d_sae)
    for s in ordered[1:]:
        check_same_input(ordered[0], s, "family")
    return ordered
