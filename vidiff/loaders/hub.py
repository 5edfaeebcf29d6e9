"""What a user downloaded, resolved to a local folder (or file) before the one folder loader runs.

- A path that exists is used as it is.
- A hub id (`org/name`, or `org/name/sub/file.safetensors` for one file of a repo) is looked up through
  huggingface_hub's cache: with `HF_HUB_OFFLINE=1` only the cache is read, online it is downloaded once.
  Only safetensors weights, configs and tokenizer files are fetched, never pickles.
- A single-file Stable Diffusion checkpoint (original LDM keys, as civitai ships) is converted once into a
  diffusers-layout folder under the vidiff cache (`singlefile.convert_checkpoint`), keyed by the file's
  size and modification time.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/[\w.\-/]+)?$")
WEIGHT_PATTERNS = ["*.json", "*.txt", "*.model", "*/*.json", "*/*.txt", "*/*.model"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub")
                                              if os.environ.get("HF_HOME") else None)


def vidiff_cache() -> Path:
    """Where converted single files are kept: $VIDIFF_CACHE, else ~/.cache/vidiff."""
    return Path(os.environ.get("VIDIFF_CACHE") or Path.home() / ".cache" / "vidiff")


def is_hub_id(text: str) -> bool:
    """True for `org/name` (optionally `/path/in/repo`) that is not a local path."""
    return bool(HUB_ID.match(str(text))) and not Path(text).exists() and not str(text).startswith((".", "/"))


def download(source: str, revision: str | None = None, kind: str = "model", variant: str | None = None) -> Path:
    """The local path of hub id `source` (a repo snapshot folder, or one file of it) from the hub cache."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    parts = str(source).split("/")
    repo, inner = "/".join(parts[:2]), "/".join(parts[2:])
    offline, cache = _offline(), _cache_dir()
    try:
        if inner:
            if not inner.endswith(".safetensors") and "." in Path(inner).name:
                raise ValueError(f"{kind} {source!r}: vidiff reads weights only from .safetensors files")
            return Path(hf_hub_download(repo, inner, revision=revision, cache_dir=cache, local_files_only=offline))
        ext = f"*.{variant}.safetensors" if variant else "*.safetensors"
        ignore = None if variant else ["*.fp16.safetensors", "*.bf16.safetensors"]
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=WEIGHT_PATTERNS + [ext, f"*/{ext}"], ignore_patterns=ignore))
    except LocalEntryNotFoundError:
        hint = "HF_HUB_OFFLINE=1 is set, so only the local hub cache is read" if offline else \
            "it is not in the local hub cache and could not be downloaded"
        raise FileNotFoundError(f"{kind} {source!r}{f' (revision {revision})' if revision else ''}: no such local path, "
                                f"and as a hub id: {hint} ({cache or 'the default hub cache'})") from None
    except Exception as e:       # repository not found, gated, network: one line naming the id
        if type(e).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
                                "GatedRepoError", "HfHubHTTPError", "ConnectionError"):
            raise FileNotFoundError(f"{kind} {source!r}: no such local path, and as a hub id: "
                                    f"{str(e).splitlines()[0]}") from None
        raise


def resolve_model(source, revision: str | None = None, kind: str = "model",
                  variant: str | None = None) -> tuple[Path, str]:
    """(local folder or file to load, how the source is recorded) for a path, hub id or single file.

    A single-file SD checkpoint comes back as its converted diffusers folder.
    """
    text = str(source)
    if Path(text).exists():
        path, recorded = Path(text), str(Path(text).resolve())
    elif is_hub_id(text):
        path = download(text, revision, kind, variant)
        recorded = text + (f"@{revision}" if revision else "")
    else:
        raise FileNotFoundError(f"{kind} {text!r} does not exist (a folder, a .safetensors file, or a hub id org/name)")
    if kind == "model" and path.is_file():
        from vidiff.loaders.convert import refuse_pickle

        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{kind} {text}: is a file, not a model folder (a folder with model_index.json) "
                             f"or a single-file .safetensors checkpoint")
        path = converted_folder(path)
    return path, recorded


def resolve_file(source, kind: str = "LoRA", revision: str | None = None) -> Path:
    """A local .safetensors file for a path or hub id (`org/name/file.safetensors`, or `org/name` whose
    repo holds exactly one .safetensors file at its top)."""
    text = str(source)
    if Path(text).exists():
        return Path(text)
    if not is_hub_id(text):
        raise FileNotFoundError(f"{kind} {text!r} does not exist (a .safetensors file or a hub id org/name)")
    path = download(text, revision, kind)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{kind} {text!r}: the repo holds {len(files)} .safetensors files at its top "
                             f"({', '.join(f.name for f in files) or 'none'}); name one as {text}/FILE.safetensors")
        path = files[0]
    return path


TOKENIZERS = {False: ("openai/clip-vit-large-patch14", ""), True: ("stabilityai/stable-diffusion-2-1", "tokenizer")}


def tokenizer_folder(sd2: bool) -> Path:
    repo, sub = TOKENIZERS[sd2]
    try:
        snap = download(repo, kind="tokenizer")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"a single-file checkpoint carries no tokenizer, and {e}; pass config=DIR "
                                "(CLI: vidiff convert FILE --config DIR), a diffusers Stable Diffusion folder") from None
    return snap / sub if sub else snap


def converted_folder(file: Path, config: str | os.PathLike | None = None) -> Path:
    """The diffusers folder of single-file checkpoint `file`, converted once into the vidiff cache."""
    from vidiff.data.io import write_folder_atomically
    from vidiff.loaders.singlefile import convert_checkpoint

    st = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{config}".encode()).hexdigest()[:16]
    out = vidiff_cache() / "single-file" / f"{file.stem}-{key}"
    if not (out / "model_index.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_folder_atomically(out, lambda tmp: convert_checkpoint(file, tmp, config=config, tokenizer=tokenizer_folder))
    return out
