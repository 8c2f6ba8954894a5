"""SAEs on the Hugging Face Hub, through huggingface_hub (its cache, HF_HUB_OFFLINE, HF_TOKEN).

A Hub SAE is a repo id, optionally with a folder in it (`sae_id`, as SAELens and sparsify lay
out repos with many SAEs: "blocks.8.hook_resid_pre", "layers.6"), in any layout SAE.load_any
reads (saelab, SAELens, sparsify, dictionary_learning). On the command line: hf://ORG/NAME or
hf://ORG/NAME/SAE_ID (the SAE_ID may hold slashes).

Without network, a repo comes from the local Hub cache (only that folder is fetched when
online); when the cache lacks it the error says so at once, instead of waiting on retries.

Publishing writes the SAE's files, its eval.json, eval_results/ and plots, and a model card
(README.md: `library_name: saelab`, the model and hook it was trained on, the training
settings and held-out metrics) into a temporary folder and uploads it as one commit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from .. import rundir
from ..errors import SaelabError

SCHEME = "hf://"
CARD = "README.md"
CARD_METRICS = (
    "nmse",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "silent_fraction",
    "ce_degradation",
    "ce_loss_recovered",
    "kl",
    "eps_lbo_median",
    "mean_absorption_fraction_score",
    "sae_top_1_test_accuracy",
    "autointerp_score",
)


class HubError(SaelabError, ValueError):
    """A Hub repo that cannot be read or written as asked."""


def parse_uri(uri: str) -> tuple[str, str | None]:
    """hf://ORG/NAME[/SAE_ID] -> (repo id, sae_id or None)."""
    parts = [p for p in uri[len(SCHEME) :].split("/") if p]
    if len(parts) < 2:
        raise HubError(f"{uri}: a Hub SAE is hf://ORG/NAME or hf://ORG/NAME/SAE_ID")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]) or None


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1, or the Hub cannot be reached."""
    return os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable()


def _why_offline() -> str:
    return "HF_HUB_OFFLINE=1" if os.environ.get("HF_HUB_OFFLINE") == "1" else "no network"


def fetch_command(repo_id: str, folder: str | None = None) -> str:
    """The huggingface_hub command that puts a repo (or one folder of it) into the cache."""
    return f"hf download {repo_id}" + (f" --include '{folder}/*'" if folder else "")


def list_files(repo_id: str, what: str) -> list[str]:
    """The files of a Hub repo (needs network: a cache does not hold the listing)."""
    if is_offline():
        raise HubError(
            f"{what} is chosen from the repo's file list, which needs the Hub ({_why_offline()}); "
            f"name the SAE's folder instead (`{fetch_command(repo_id)}` lists and fetches all)"
        )
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo_id)


def _reachable(timeout: float = 3.0) -> bool:
    host = (
        urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        or "huggingface.co"
    )
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# a folder holding one of these holds an SAE
SAE_FILES = ("cfg.json", "config.json", "params.npz", "hyperparams.json")


def download(repo_id: str, sae_id: str | None = None, revision: str | None = None) -> Path:
    """The local folder of a Hub SAE: from the cache when offline (HF_HUB_OFFLINE=1 or no
    network), else fetched (only the sae_id folder) into the cache. A missing folder is named
    with the SAE folders the repo has."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_offline()
    what = (
        f"{repo_id}"
        + (f" (folder {sae_id})" if sae_id else "")
        + (f" at revision {revision}" if revision else "")
    )
    try:
        root = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=offline,
                allow_patterns=[f"{sae_id}/*"] if sae_id and not offline else None,
            )
        )
    except LocalEntryNotFoundError:
        raise HubError(
            f"{what} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({_why_offline()}): fetch it once with network, `{fetch_command(repo_id, sae_id)}`, "
            "or pass a local directory"
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{repo_id} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"no Hub repo {repo_id} (or it is private: set HF_TOKEN), and no local directory of "
            "that name"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision}") from None
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a Hub repo id: {err}") from None
    folder = root / sae_id if sae_id else root
    if folder.is_dir() and (sae_id or any((root / name).is_file() for name in SAE_FILES)):
        return folder

    if offline:
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    else:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(repo_id, revision=revision)
    found = sorted({str(Path(f).parent) for f in files if Path(f).name in SAE_FILES} - {"."})
    if not sae_id and not found:
        return folder  # no SAE anywhere: loading it says what the folder holds
    listed = f"{', '.join(found[:20])}" + (
        f" (and {len(found) - 20} more)" if len(found) > 20 else ""
    )
    if not sae_id:
        raise HubError(
            f"{repo_id} holds {len(found)} SAEs in folders, none at its root: pass one as sae_id "
            f"(or hf://{repo_id}/FOLDER): {listed}"
        )
    where = "its cached SAE folders" if offline else "its SAE folders"
    raise HubError(
        f"{repo_id} has no folder {sae_id}"
        + (f"; {where}: {listed}" if found else "")
        + (f"; fetch it with network: `{fetch_command(repo_id, sae_id)}`" if offline else "")
    )


def resolve(repo_or_path: str, sae_id: str | None = None, revision: str | None = None) -> Path:
    """A local directory for an hf:// URI (always the Hub), a local path, or a repo id ORG/NAME
    that is not a local path."""
    if repo_or_path.startswith(SCHEME):
        if sae_id is not None:
            raise HubError("give the SAE's folder either in the hf:// URI or as sae_id, not both")
        return download(*parse_uri(repo_or_path), revision)
    path = Path(repo_or_path)
    if path.exists() or repo_or_path.startswith((".", "/", "~")) or repo_or_path.count("/") != 1:
        folder = path / sae_id if sae_id else path
        if not folder.exists():
            raise HubError(f"no SAE directory at {folder}")
        return folder
    return download(repo_or_path, sae_id, revision)


def model_card(sae, run: Path | None, repo_id: str, sae_id: str | None = None) -> str:
    """README.md for the Hub: metadata, what the SAE was trained on, how to load it, its
    settings and held-out metrics."""
    cfg, meta = sae.cfg, sae.cfg.metadata
    results = (rundir.read_eval(run) if run else None) or {}
    train = (
        json.loads((run / rundir.TRAIN_CONFIG).read_text())
        if run and (run / rundir.TRAIN_CONFIG).is_file()
        else {}
    )
    model = meta.get("model", meta.get("model_name", meta.get("lm_name")))
    lines = [
        "---",
        "library_name: saelab",
        "tags:",
        "- saelab",
        "- sparse-autoencoder",
        f"- {cfg.arch}",
    ]
    if model and not str(model).startswith(("builtin:", "/", ".")) and str(model).count("/") == 1:
        lines.append(f"base_model: {model}")
    lines += ["---", "", f"# {cfg.arch} SAE, d_in={cfg.d_in}, d_sae={cfg.d_sae}", ""]
    hook = ", ".join(
        f"{key}: {meta[key]}"
        for key in ("model", "layer", "site", "dataset", "hook_name")
        if key in meta
    )
    lines += [
        f"Trained with saelab on {hook or 'activations it does not record'}.",
        "",
        "```python",
        "from saelab import SAE",
        f'sae = SAE.from_pretrained("{repo_id}"' + (f', sae_id="{sae_id}")' if sae_id else ")"),
        "```",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    settings = {
        **cfg.to_dict(),
        **{k: v for k, v in train.items() if k in ("batch_size", "lr", "total_tokens", "seed")},
    }
    lines += [
        f"| {key} | {value} |"
        for key, value in settings.items()
        if key != "metadata" and value is not None
    ]
    shown = [
        (key, results[key]) for key in CARD_METRICS if isinstance(results.get(key), (int, float))
    ]
    if shown:
        lines += [
            "",
            f"## Held-out metrics ({results.get('n_tokens', '?')} tokens)",
            "",
            "| metric | value |",
            "|---|---|",
        ] + [f"| {key} | {value:.4f} |" for key, value in shown]
    return "\n".join(lines) + "\n"


def push_to_hub(
    sae,
    repo_id: str,
    sae_id: str | None = None,
    private: bool = False,
    run: str | Path | None = None,
    api=None,
    commit_message: str | None = None,
) -> str:
    """Upload `sae` (and from `run`, its evaluation, plots and training settings) to the Hub repo
    `repo_id`, into folder `sae_id` if given, as one commit; returns the commit's URL. `api` is
    a huggingface_hub.HfApi (default: one with HF_TOKEN)."""
    from huggingface_hub import HfApi

    if api is None:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable():
            raise HubError(
                f"pushing to {repo_id} needs the Hugging Face Hub, which "
                + (
                    "offline mode (HF_HUB_OFFLINE=1) rules out"
                    if os.environ.get("HF_HUB_OFFLINE") == "1"
                    else "is not reachable from this machine"
                )
            )
        api = HfApi()
    run = Path(run) if run else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sae.save(folder)
        if run is not None:
            for name in (
                rundir.EVAL,
                rundir.TRAIN_CONFIG,
                *rundir.PLOTS.values(),
                rundir.EVAL_RESULTS,
            ):
                source = run / name
                if source.is_dir():
                    shutil.copytree(source, folder / name)
                elif source.is_file():
                    shutil.copy2(source, folder / name)
        (folder / CARD).write_text(model_card(sae, run, repo_id, sae_id))
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=sae_id or "",
            commit_message=commit_message
            or f"saelab: {sae.cfg.arch} SAE" + (f" in {sae_id}" if sae_id else ""),
        )
        if sae_id and not api.file_exists(repo_id, CARD):
            api.upload_file(
                path_or_fileobj=str(folder / CARD),
                path_in_repo=CARD,
                repo_id=repo_id,
                commit_message="saelab: model card",
            )
    return str(getattr(commit, "commit_url", commit))
