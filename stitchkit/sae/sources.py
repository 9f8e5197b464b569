"""Where an SAE comes from: a source string names one, and `resolve` turns it into a local path.

    PATH                         a directory or file on disk (any layout of sae.formats)
    hf://REPO_ID[@REV]/PATH      a folder or file in a Hugging Face hub repository, downloaded through
                                 huggingface_hub into its usual cache: only the files an SAE layout
                                 can need (formats.HUB_FILES), not the whole repository. With
                                 HF_HUB_OFFLINE=1 it is read from that cache alone.
    saelens:RELEASE/SAE_ID       a name in SAELens' pretrained registry (pretrained_saes.yaml), read
                                 from the installed sae-lens package's files without importing it
                                 (or from STITCHKIT_SAELENS_REGISTRY=path/to/pretrained_saes.yaml);
                                 it resolves to hf://repo_id/path, with the registry's norm scaling
                                 factor where it lists one.

A family is named at once with a width pattern in any source: `{768..98304:x2}` (768, 1536, ...
up to 98304, each twice the last) or `{768,1536,3072}`; `expand_family` lists the sources.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, SAEFormatError, StitchkitError

HF_PREFIX = "hf://"
SAELENS_PREFIX = "saelens:"
REGISTRY_ENV = "STITCHKIT_SAELENS_REGISTRY"
_PATTERN = re.compile(r"\{(\d+)\.\.(\d+):x(\d+)\}|\{(\d+(?:,\d+)+)\}")


@dataclass
class Resolved:
    """A source made local: `path` on disk, the name it suggests, and reader options it implies."""

    path: Path
    name: str
    options: dict[str, Any] = field(default_factory=dict)


def expand_family(source: str) -> list[str]:
    """The sources a width pattern names (a source without one is its own list)."""
    m = _PATTERN.search(source)
    if not m:
        return [source]
    if m.group(4):
        values = [int(v) for v in m.group(4).split(",")]
        repeats = sorted({v for v in values if values.count(v) > 1})
        if repeats:
            raise InvalidArgumentError(
                f"source {source!r}: width pattern {m.group(0)!r} names width {repeats[0]} twice"
            )
    else:
        lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if lo < 1 or hi < lo or step < 2:
            raise InvalidArgumentError(
                f"source {source!r}: width pattern {m.group(0)!r} needs 1 <= first <= last and a factor >= 2"
            )
        values = []
        v = lo
        while v <= hi:
            values.append(v)
            v *= step
    head, tail = source[: m.start()], source[m.end() :]
    return [s for v in values for s in expand_family(f"{head}{v}{tail}")]


def parse_hf(source: str) -> tuple[str, str | None, str]:
    """hf://REPO_ID[@REV]/PATH -> (repo_id, revision or None, path in repo)."""
    rest = source[len(HF_PREFIX) :]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidArgumentError(f"source {source!r}: expected hf://OWNER/REPO[@REVISION][/PATH]")
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise InvalidArgumentError(f"source {source!r}: expected hf://OWNER/REPO@REVISION/PATH")
    return f"{owner}/{repo}", revision, "/".join(p for p in parts[2:] if p)


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise StitchkitError("hf:// sources need huggingface_hub: pip install huggingface_hub") from e
    return huggingface_hub


def resolve_hf(source: str) -> Path:
    """Download (or find in the cache) what the SAE at `source` needs; its local path."""
    repo_id, revision, sub = parse_hf(source)
    hub = _hub()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    how = "in the local Hugging Face cache (HF_HUB_OFFLINE=1)" if offline else "on the hub"
    # Read the environment at each call (huggingface_hub reads it once, at its import).
    kw = dict(revision=revision, local_files_only=offline)
    if os.environ.get("HF_HUB_CACHE"):
        kw["cache_dir"] = os.environ["HF_HUB_CACHE"]
    try:
        if Path(sub).suffix in (".npz", ".pt", ".pth", ".safetensors", ".json"):
            local = hub.hf_hub_download(repo_id, sub, **kw)
            if Path(sub).name == "ae.pt":  # dictionary_learning's ae.pt reads the config.json beside it
                try:
                    hub.hf_hub_download(repo_id, str(Path(sub).parent / "config.json"), **kw)
                except Exception:
                    pass
            return Path(local)
        from .formats import HUB_FILES

        patterns = [f"{sub}/{name}" if sub else name for name in HUB_FILES]
        root = hub.snapshot_download(repo_id, allow_patterns=patterns, **kw)
    except Exception as e:  # RepositoryNotFoundError, LocalEntryNotFoundError, HTTP errors ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SAEFormatError(f"{source}: not found {how} ({type(e).__name__}: {first[:200]})") from e
    path = Path(root) / sub
    if not path.exists():
        raise SAEFormatError(
            f"{source}: the repository {repo_id} has no SAE files under {sub!r} {how} "
            f"(looked for {', '.join(HUB_FILES)})"
        )
    return path


def registry_file() -> Path:
    """sae-lens' packaged pretrained_saes.yaml (STITCHKIT_SAELENS_REGISTRY overrides)."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        if not Path(env).is_file():
            raise SAEFormatError(f"{REGISTRY_ENV}={env}: no such file")
        return Path(env)
    spec = importlib.util.find_spec("sae_lens")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise StitchkitError(
            "saelens: sources need SAELens' registry: pip install sae-lens (in any environment), or "
            f"set {REGISTRY_ENV} to its pretrained_saes.yaml, or use hf://REPO_ID/PATH instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not path.is_file():
        raise SAEFormatError(f"{path}: sae-lens is installed but its pretrained_saes.yaml is missing")
    return path


def resolve_saelens(source: str) -> tuple[str, dict[str, Any]]:
    """saelens:RELEASE/SAE_ID -> (hf:// source, reader options)."""
    import yaml

    body = source[len(SAELENS_PREFIX) :]
    if "/" not in body:
        raise InvalidArgumentError(f"source {source!r}: expected saelens:RELEASE/SAE_ID")
    release, sae_id = body.split("/", 1)
    path = registry_file()
    with open(path) as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    entry = (data or {}).get(release)
    if entry is None:
        raise SAEFormatError(f"{source}: release {release!r} is not in {path}")
    conv = entry.get("conversion_func")
    if conv not in (None, "sae_lens", "sparsify", "gemma_2", "llama_scope", "dictionary_learning_1"):
        raise SAEFormatError(
            f"{source}: release {release!r} uses SAELens' {conv!r} loader, which stitchkit does not read"
        )
    for sae in entry.get("saes") or []:
        if sae.get("id") == sae_id:
            options: dict[str, Any] = {}
            if sae.get("norm_scaling_factor") is not None:
                options["norm_scaling_factor"] = float(sae["norm_scaling_factor"])
            return f"{HF_PREFIX}{entry['repo_id']}/{sae['path']}", options
    ids = [s.get("id") for s in entry.get("saes") or []]
    raise SAEFormatError(
        f"{source}: release {release!r} has no SAE {sae_id!r} "
        f"(it has {ids[:6]}{'...' if len(ids) > 6 else ''})"
    )


def resolve(source: str | os.PathLike) -> Resolved:
    """The local path of `source` (see the module doc), downloading what it needs."""
    text = os.fspath(source)
    if text.startswith(SAELENS_PREFIX):
        hf, options = resolve_saelens(text)
        r = resolve(hf)
        return Resolved(r.path, text[len(SAELENS_PREFIX) :].split("/", 1)[1], {**r.options, **options})
    if text.startswith(HF_PREFIX):
        path = resolve_hf(text)
    else:
        path = Path(text)
        if not path.exists():
            raise SAEFormatError(f"{path}: SAE directory or file does not exist")
    return Resolved(path, _default_name(path))


def _default_name(path: Path) -> str:
    """The name a source suggests: its folder's, or for a file that is an SAE of its own (an OpenAI
    .pt) its stem; params.npz and ae.pt are named by their folder."""
    if path.is_dir():
        return path.name
    if path.suffix == ".npz" or path.name == "ae.pt":
        return path.parent.name
    return path.stem
