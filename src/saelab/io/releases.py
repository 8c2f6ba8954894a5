"""Public SAE releases by name, as SAELens's pretrained_saes.yaml names them, but checked: a
release is a Hub repo, the model it was trained on, its hook site (where it is saelab's), and
the pattern of its SAE ids with the folder each id names; an id that does not fit is refused
with the pattern and an example before anything is fetched.

    SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")

Gemma Scope's canonical SAE of a layer and width is its folder with the average L0 closest to
100, which is how the release's canonical lists are made (two ties of the rounded folder names
are recorded in TIES); resolving it
needs the repo's file list, from the Hub (so offline it is refused, with the concrete ids to use
instead). `saelab releases` prints the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SaelabError
from . import hub


class ReleaseError(SaelabError, ValueError):
    """A release name or SAE id that the registry does not hold."""


@dataclass(frozen=True)
class Release:
    """One release: ids matching `sae_id` (a regex with a `layer` group, None for an embedding
    SAE) name the repo folder `folder.format(**groups, sae_id=id)`; `canonical`: the folder is
    chosen from the repo's listing."""

    name: str
    repo_id: str
    model: str
    site: str | None
    sae_id: str
    folder: str
    example: str
    layers: int  # the model's layer count: ids name layers 0 .. layers - 1
    canonical: bool = False

    def match(self, sae_id: str) -> dict:
        """The id's fields; a ReleaseError naming the pattern when it does not fit."""
        found = re.fullmatch(self.sae_id, sae_id or "")
        if not found:
            raise ReleaseError(
                f"release {self.name} has no SAE id {sae_id!r}: its ids look like "
                f"{self.example!r} (pattern {self.sae_id})"
            )
        if found["layer"] is not None and not 0 <= int(found["layer"]) < self.layers:
            raise ReleaseError(
                f"release {self.name}: layer {found['layer']} is not a layer of {self.model} "
                f"(0 .. {self.layers - 1})"
            )
        return found.groupdict()


def _gemma_scope() -> list[Release]:
    models = {"2b": ("google/gemma-2-2b", 26), "9b": ("google/gemma-2-9b", 42),
              "27b": ("google/gemma-2-27b", 46)}  # fmt: skip
    examples = {  # (size, kind, hook): an SAE of each release, and its canonical id
        ("2b", "pt", "res"): "layer_12/width_16k/average_l0_82",
        ("2b", "pt", "mlp"): "layer_12/width_65k/average_l0_96",
        ("2b", "pt", "att"): "layer_12/width_65k/average_l0_79",
        ("9b", "pt", "res"): "layer_20/width_131k/average_l0_114",
        ("9b", "pt", "mlp"): "layer_20/width_131k/average_l0_93",
        ("9b", "pt", "att"): "layer_20/width_131k/average_l0_125",
        ("27b", "pt", "res"): "layer_22/width_131k/average_l0_82",
        ("9b", "it", "res"): "layer_20/width_131k/average_l0_81",
    }
    out = []
    for (size, kind, hook), example in examples.items():
        model, layers = models[size]
        model += "-it" if kind == "it" else ""
        repo = f"google/gemma-scope-{size}-{kind}-{hook}"
        site = "resid_post" if hook == "res" else None  # Gemma's mlp_out is after its norm
        ids = r"(layer_(?P<layer>\d+)|embedding)/width_(?P<width>\d+[km])/"
        canonical = example.rsplit("/", 1)[0] + "/canonical"  # each has its canonical list
        out += [
            Release(repo.split("/")[1], repo, model, site, ids + r"average_l0_(?P<l0>\d+)",
                    "{sae_id}", example, layers),
            Release(f"{repo.split('/')[1]}-canonical", repo, model, site, ids + "canonical",
                    "layer_{layer}/width_{width}", canonical, layers, canonical=True),
        ]  # fmt: skip
    return out


def _gemma_scope_2() -> list[Release]:
    models = {"270m": ("google/gemma-3-270m", 18, 12), "1b": ("google/gemma-3-1b-pt", 26, 13),
              "4b": ("google/gemma-3-4b-pt", 34, 17)}  # fmt: skip
    return [
        Release(f"gemma-scope-2-{size}-pt-res", f"google/gemma-scope-2-{size}-pt", model,
                "resid_post",
                r"layer_(?P<layer>\d+)_width_\d+[km]_l0_(small|medium|big)(_seed_\d+)?",
                "resid_post/{sae_id}", f"layer_{layer}_width_16k_l0_medium", layers)
        for size, (model, layers, layer) in models.items()
    ]  # fmt: skip


def _llama_scope() -> list[Release]:
    sites = {"r": "resid_post", "m": "mlp_out", "a": "attn_out"}
    return [
        Release(f"llama_scope_lx{kind}_{x}x", f"fnlp/Llama3_1-8B-Base-LX{kind.upper()}-{x}x",
                "meta-llama/Llama-3.1-8B", site, rf"l(?P<layer>\d+){kind}_{x}x",
                f"Llama3_1-8B-Base-L{{layer}}{kind.upper()}-{x}x", f"l15{kind}_{x}x", 32)
        for kind, site in sites.items()
        for x in (8, 32)
    ]  # fmt: skip


RELEASES = {
    release.name: release
    for release in (
        *_gemma_scope(),
        *_gemma_scope_2(),
        *_llama_scope(),
        Release(
            "sae-llama-3-8b-32x",
            "EleutherAI/sae-llama-3-8b-32x",
            "meta-llama/Meta-Llama-3-8B",
            "resid_post",
            r"layers\.(?P<layer>\d+)",
            "{sae_id}",
            "layers.10",
            32,
        ),
    )  # fmt: skip
}


def resolve(name: str, sae_id: str | None) -> tuple[str, str, dict]:
    """(repo id, folder in it, metadata to record) of a release's SAE."""
    release = RELEASES[name]
    if sae_id is None:
        raise ReleaseError(f"release {name} holds many SAEs: pass sae_id, e.g. {release.example!r}")
    fields = release.match(sae_id)
    folder = release.folder.format(**fields, sae_id=sae_id)
    if release.canonical:
        folder = canonical_folder(release, folder)
    metadata = {"release": name, "sae_id": sae_id, "model": release.model}
    if fields["layer"] is not None:  # else Gemma Scope's embedding SAEs: no saelab hook point
        metadata["layer"] = int(fields["layer"])
        if release.site:
            metadata["site"] = release.site
    return release.repo_id, folder, metadata


# the folder names round the average L0; the release's canonical list breaks their two ties
# (by the unrounded L0, which the names do not carry)
TIES = {
    ("google/gemma-scope-9b-pt-att", "layer_27/width_16k"): 136,
    ("google/gemma-scope-9b-pt-att", "layer_23/width_131k"): 66,
}


def canonical_folder(release: Release, prefix: str, files: list[str] | None = None) -> str:
    """The folder under `prefix` (layer_L/width_W) whose average L0 is closest to 100 (TIES
    where two are), from the repo's file list (fetched when not given)."""
    if files is None:
        files = hub.list_files(release.repo_id, f"{release.name} {prefix}/canonical")
    found = {
        int(m[1])
        for f in files
        if (m := re.fullmatch(re.escape(prefix) + r"/average_l0_(\d+)/.*", f))
    }
    if not found:
        raise ReleaseError(f"{release.repo_id} has no folder {prefix}/average_l0_*")
    best = sorted(found, key=lambda l0: abs(l0 - 100))[:2]
    if len(best) == 2 and abs(best[0] - 100) == abs(best[1] - 100):
        tie = TIES.get((release.repo_id, prefix))
        if tie not in best:
            raise ReleaseError(
                f"{release.repo_id} {prefix}: average_l0_{best[0]} and average_l0_{best[1]} are "
                "equally close to 100; name the folder instead of canonical"
            )
        return f"{prefix}/average_l0_{tie}"
    return f"{prefix}/average_l0_{best[0]}"


def table() -> list[str]:
    """The releases as lines: name, repo, model, site, an example id."""
    rows = [("release", "repo", "model", "site", "example sae_id")]
    rows += [(r.name, r.repo_id, r.model, r.site or "-", r.example) for r in RELEASES.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
