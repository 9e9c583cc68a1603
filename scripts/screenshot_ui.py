"""Save a PNG of the Dagster asset graph, every group expanded, rendered by headless Chromium.

    .venv/bin/python scripts/screenshot_ui.py                     # -> reports/asset-graph.png
    .venv/bin/python scripts/screenshot_ui.py --url http://127.0.0.1:3000   # a running `make ui`

Without ``--url`` it starts ``dagster-webserver`` on a free port (a temporary instance, or
``--dagster-home`` to show an existing instance's materializations) and stops it afterwards.

The lineage page draws each asset group collapsed; the script asks for every group expanded
(the ``expanded`` query parameter that the graph's "Expand all groups" setting writes) and
makes the window tall enough for the graph at full width (the UI zooms to fit the width);
``--direction vertical`` lays it out top to bottom, shorter but with overlapping group boxes.
The assets, groups and edges are read from the webserver's GraphQL API, and the PNG is taken
once the page shows all of them: every asset node and every dependency edge drawn (the UI
draws only what is in view, so this also proves that all of them fit), the live status of
every asset fetched, and the graph unchanged for a moment after that.

Needs Playwright and a Chromium. Neither is in requirements.lock; install them with
``.venv/bin/pip install playwright`` and then either ``apt-get install chromium`` (found on
PATH, or pass ``--browser``; what this project was checked with) or
``.venv/bin/playwright install chromium`` (downloads Playwright's own build).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

import requests

from alignrec.env import set_offline
from alignrec.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

GRAPH_PATH = "/asset-groups"
# The UI's id of a group while its per-code-location groups flag is off (the default).
GROUP_ID = "global@global:{}"
DIRECTIONS = ("horizontal", "vertical")
# The graph's <svg>, its asset nodes (a group's box is a sibling <foreignObject>) and edges.
GRAPH_SVG = "svg:has(> foreignObject)"
ASSET_NODE = f"{GRAPH_SVG} > foreignObject [class*=assetNodeContainer]"
EDGE = f"{GRAPH_SVG} > path[marker-end]"
# The UI's own settings, kept in localStorage: left navigation collapsed, graph wider.
UI_SETTINGS = {"dagster-nav-collapsed": True}
FIT_MARGIN_PX = 32
# The query that fetches assets' live status, and how long the graph must then stay unchanged:
# the UI applies the answers in batches at most once a second.
LIVE_QUERY = "op=AssetGraphLiveQuery"
QUIET_MS = 1500
SYSTEM_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_ASSETS = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"

# Extra window height the graph needs when scaled to the viewport's width, as the UI's
# auto-center does: the graph <svg>'s size is the layout's, its nearest clipping ancestor is
# the viewport.
_MISSING_HEIGHT_JS = """(selector) => {
  const svg = document.querySelector(selector);
  let frame = svg.parentElement;
  while (getComputedStyle(frame).overflow !== 'hidden') frame = frame.parentElement;
  const view = frame.getBoundingClientRect();
  const width = Number(svg.getAttribute('width'));
  const height = Number(svg.getAttribute('height'));
  return Math.ceil(height * Math.min(view.width / width, 1) - view.height);
}"""


class AssetGraph(NamedTuple):
    """What the served definitions contain: asset names, group names, dependency edges."""

    names: list[str]
    groups: list[str]
    edges: int


def asset_graph(url: str) -> AssetGraph:
    """The asset graph served at ``url``, read from its GraphQL API."""
    reply = requests.post(f"{url}/graphql", json={"query": _ASSETS}, timeout=30)
    reply.raise_for_status()
    nodes = reply.json()["data"]["assetNodes"]
    keys = {tuple(node["assetKey"]["path"]) for node in nodes}
    edges = sum(tuple(dep["path"]) in keys for node in nodes for dep in node["dependencyKeys"])
    return AssetGraph(
        names=sorted("/".join(key) for key in keys),
        groups=sorted({node["groupName"] for node in nodes}),
        edges=edges,
    )


def graph_url(url: str, groups: list[str]) -> str:
    """The lineage page with every group in ``groups`` expanded."""
    query = urlencode({"expanded": ",".join(GROUP_ID.format(group) for group in groups)})
    return f"{url.rstrip('/')}{GRAPH_PATH}?{query}"


def _settings_js(settings: dict[str, object]) -> str:
    """A page script that stores ``settings`` where the UI reads them, before it starts."""
    return "".join(
        f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(value))});"
        for key, value in settings.items()
    )


def find_browser(explicit: str | None) -> str | None:
    """The Chromium to drive: ``explicit``, else one on PATH, else None (Playwright's own)."""
    if explicit:
        return explicit
    return next((path for name in SYSTEM_BROWSERS if (path := shutil.which(name))), None)


def _live_keys(request: Request) -> set[str]:
    """The assets whose live status ``request`` fetched (none unless it is the live query)."""
    if LIVE_QUERY not in request.url:
        return set()
    return {"/".join(key["path"]) for key in request.post_data_json["variables"]["assetKeys"]}


def _wait_for_graph(page: Page, graph: AssetGraph, live: set[str]) -> None:
    """Block until every node and edge is drawn, with every asset's status in ``live``."""
    page.wait_for_function(
        "([nodes, edges, counts]) => document.querySelectorAll(nodes).length >= counts[0]"
        " && document.querySelectorAll(edges).length >= counts[1]",
        arg=[ASSET_NODE, EDGE, [len(graph.names), graph.edges]],
    )
    # Requests finish only while Playwright waits, so none can slip between test and wait.
    if not set(graph.names) <= live:
        page.wait_for_event("requestfinished", predicate=lambda _: set(graph.names) <= live)
    page.evaluate(
        """(selector) => {
          window.graphChangedAt = performance.now();
          new MutationObserver(() => { window.graphChangedAt = performance.now(); }).observe(
            document.querySelector(selector),
            {subtree: true, childList: true, attributes: true, characterData: true});
        }""",
        GRAPH_SVG,
    )
    page.wait_for_function("(ms) => performance.now() - window.graphChangedAt >= ms", arg=QUIET_MS)
    page.evaluate("document.fonts.ready.then(() => true)")


def screenshot(
    url: str,
    out: Path,
    *,
    browser: str | None,
    size: tuple[int, int],
    direction: str,
    pixel_ratio: float,
    timeout_s: float,
) -> Path:
    """Open the expanded asset graph at ``url``, fit it in the window, save a PNG at ``out``."""
    from playwright.sync_api import sync_playwright

    graph = asset_graph(url)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser, headless=True)
        page = chromium.new_page(
            viewport={"width": size[0], "height": size[1]}, device_scale_factor=pixel_ratio
        )
        page.set_default_timeout(timeout_s * 1000)
        page.add_init_script(_settings_js({**UI_SETTINGS, "asset-graph-direction": direction}))
        live: set[str] = set()
        page.on("requestfinished", lambda request: live.update(_live_keys(request)))
        # The UI polls live data, so the network never idles for long: wait for elements.
        page.goto(graph_url(url, graph.groups), wait_until="domcontentloaded")
        page.locator(GRAPH_SVG).wait_for(state="attached")
        missing = page.evaluate(_MISSING_HEIGHT_JS, GRAPH_SVG)
        if missing > 0:  # auto-center fits the width only: grow the window, lay out again
            page.set_viewport_size({"width": size[0], "height": size[1] + missing + FIT_MARGIN_PX})
            live.clear()
            page.reload(wait_until="domcontentloaded")
            page.locator(GRAPH_SVG).wait_for(state="attached")
        _wait_for_graph(page, graph, live)
        page.screenshot(path=str(out))
        chromium.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "asset-graph.png")
    parser.add_argument("--url", help="a running Dagster UI; without it a webserver is started")
    parser.add_argument(
        "--dagster-home",
        type=Path,
        help="instance for the started webserver (default: a temporary one)",
    )
    parser.add_argument(
        "--browser", help="Chromium executable (default: one on PATH, else Playwright's own build)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(1600, 1000),
        metavar=("W", "H"),
        help="window in CSS pixels; H grows when the graph needs it",
    )
    parser.add_argument(
        "--direction", choices=DIRECTIONS, default=DIRECTIONS[0], help="how the graph is laid out"
    )
    parser.add_argument(
        "--pixel-ratio", type=float, default=2.0, help="device pixels per CSS pixel (sharper text)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each wait for the page may take"
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("playwright") is None:
        sys.exit("playwright is not installed: .venv/bin/pip install playwright (see --help)")
    set_offline()
    browser = find_browser(args.browser)

    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            server = nullcontext(args.url)
        else:
            from orchestration.ui import webserver, write_instance

            home = args.dagster_home or Path(tmp) / "dagster_home"
            if args.dagster_home is None:
                write_instance(home)
            server = webserver(home, log=Path(tmp) / "webserver.log")
        with server as url:
            out = screenshot(
                url,
                args.out,
                browser=browser,
                size=tuple(args.size),
                direction=args.direction,
                pixel_ratio=args.pixel_ratio,
                timeout_s=args.timeout,
            )
    print(out)


if __name__ == "__main__":
    main()
