"""Classifying a large SAE's features against a small one by max decoder cosine: novel or
reconstruction (stitch.rules), the 2x2 table against insertion dMSE, and how decoder cosine agrees
with activation similarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from ..ops.max_cosine import MaxCosine
from ..sae.model import SAE, check_same_input
from .rules import DEFAULT_THRESHOLD, check_threshold, is_novel
from .similarity import max_cosine, novel_fraction_sweep


@dataclass
class Classification:
    """Each large feature's max decoder cosine against the small SAE and its class.

    max_cos: float32 [F_large]; nearest: int64 [F_large], the small feature attaining it;
    novel: bool [F_large], stitch.rules.is_novel(max_cos, threshold); sweep: (thresholds [T], n_novel [T]) for
    0.30..0.95 from the same pass.
    """

    small: str
    large: str
    threshold: float
    max_cos: torch.Tensor
    nearest: torch.Tensor
    novel: torch.Tensor
    sweep: tuple[torch.Tensor, torch.Tensor]

    @property
    def reconstruction(self) -> torch.Tensor:
        return ~self.novel

    @property
    def novel_features(self) -> torch.Tensor:
        """int64 indices of the novel large features."""
        return self.novel.nonzero().flatten()

    @property
    def reconstruction_features(self) -> torch.Tensor:
        return self.reconstruction.nonzero().flatten()


def classify(
    small: SAE,
    large: SAE,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    backend: str = "auto",
    precision: str = "fp32",
) -> Classification:
    """Split `large`'s features into novel (max cos <= threshold) and reconstruction features."""
    threshold = check_threshold(threshold, "classify")
    check_same_input(small, large, "classify")
    values, indices = max_cosine(large, small, backend=backend, precision=precision)
    values, indices = values.cpu(), indices.cpu()
    return Classification(
        small=small.name,
        large=large.name,
        threshold=threshold,
        max_cos=values,
        nearest=indices,
        novel=is_novel(values, threshold),
        sweep=novel_fraction_sweep(values),
    )


@dataclass
class DeltaTable:
    """The reference work's 2x2 table: counts of (novel, reconstruction) x (dMSE < 0, dMSE >= 0)."""

    novel_helps: int
    novel_hurts: int
    recon_helps: int
    recon_hurts: int

    def rows(self) -> list[dict]:
        return [
            dict(cls="novel", helps=self.novel_helps, hurts=self.novel_hurts),
            dict(cls="reconstruction", helps=self.recon_helps, hurts=self.recon_hurts),
        ]


def delta_table(classification: Classification, delta_mse: torch.Tensor) -> DeltaTable:
    """Cross `classification` with per-feature dMSE (from marginal_delta_mse over all large features)."""
    if delta_mse.shape != classification.novel.shape:
        raise InvalidArgumentError(
            f"delta_table: delta_mse has shape {tuple(delta_mse.shape)}, expected one value per large "
            f"feature {tuple(classification.novel.shape)}"
        )
    novel, helps = classification.novel, delta_mse.cpu() < 0
    return DeltaTable(
        novel_helps=int((novel & helps).sum()),
        novel_hurts=int((novel & ~helps).sum()),
        recon_helps=int((~novel & helps).sum()),
        recon_hurts=int((~novel & ~helps).sum()),
    )


@dataclass
class Agreement:
    """How decoder cosine and activation similarity agree on the large SAE's features.

    same_nearest: fraction of reconstruction features (by decoder cosine) whose nearest small
    feature is the same under both measures. class_agreement: fraction of live features that
    both call novel or both call reconstruction (activation similarity at the same threshold).
    spearman: rank correlation of the two max-similarity values over live features.
    """

    same_nearest: float
    class_agreement: float
    spearman: float
    n_live: int


def _ranks(v: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(v, dtype=torch.float64)
    r[torch.argsort(v, stable=True)] = torch.arange(len(v), dtype=torch.float64)
    return r


def similarity_agreement(decoder: Classification, activation: MaxCosine) -> Agreement:
    """Compare `classify`'s decoder cosines with `activation_similarity` of the same SAE pair."""
    live = activation.indices.cpu() >= 0
    dec_v, act_v = decoder.max_cos[live].double(), activation.values.cpu()[live].double()
    recon = (~decoder.novel) & live
    same = (
        (decoder.nearest[recon] == activation.indices.cpu()[recon]).double().mean()
        if recon.any()
        else torch.tensor(float("nan"))
    )
    agree = (is_novel(dec_v, decoder.threshold) == is_novel(act_v, decoder.threshold)).double().mean()
    rd, ra = _ranks(dec_v), _ranks(act_v)
    rd, ra = rd - rd.mean(), ra - ra.mean()
    rho = (rd @ ra) / (rd.norm() * ra.norm()) if len(rd) > 1 else torch.tensor(float("nan"))
    return Agreement(float(same), float(agree), float(rho), int(live.sum()))
