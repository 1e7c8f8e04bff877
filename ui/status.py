"""What the page says about the basis on screen: the status line and the share link.

Shared by the explore section and by restoring an edit (page load, file), which both show a basis.
"""

from __future__ import annotations

import gradio as gr

from backend.state import EditState

from .editor import Found

NO_DIRECTIONS = "Press **Find directions** to compute this image's directions."


def found_status(found: Found) -> str:
    s = found.state
    how = "from the cache" if found.cached else f"in {found.seconds:.1f} s"
    text = f"**{s.k} directions** of seed {s.seed} at t = {s.timestep:g} T (timestep {found.timestep}), found {how}. Move a slider; several combine."
    for warning in found.warnings:
        text += f"\n\n⚠️ {warning}"
    return text


def stale_status(found: Found | None, model, prompt, seed, timestep, k, steps) -> str:
    """The status once a setting moved: the sliders still belong to the basis found before."""
    if found is None:
        return NO_DIRECTIONS
    s = found.state
    try:
        same = (s.model, s.prompt, s.seed, s.k, s.steps) == (model, prompt or "", int(seed), int(k), int(steps)) and abs(s.timestep - float(timestep)) < 1e-9
    except (TypeError, ValueError):
        same = False
    if same:
        return found_status(found)
    return f"Settings changed: press **Find directions** to apply them. The sliders still belong to seed {s.seed}, t = {s.timestep:g}, k = {s.k}."


def share_link(page_url: str, state: EditState) -> str:
    return f"{page_url}?{state.to_query()}"


def page_url(request: gr.Request | None) -> str:
    """The page's address without its query, as the browser sent it (works behind proxies)."""
    if request is None:
        return ""
    headers = {key.lower(): value for key, value in dict(request.headers).items()}
    referer = headers.get("referer", "")
    return referer.split("?", 1)[0].split("#", 1)[0]
