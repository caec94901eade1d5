"""report.html (and browse.html, when it exists) for a large run: build time and time to open in headless Chromium.

A benchmark, not a test: it prints the figures and never fails on numbers. Two synthetic runs
are written through the real run store (tests/support/synthetic_run.py): a baseline the size of
the quickstart (10 items, 3 trajectories) and a large one (5,000 items, 2,000 trajectories by
default). For each, the page is built (timed), then opened in the system Chromium several times
(a fresh page each time, from its file:// URL) and the browser's own clocks are read through
the Performance API: ``loadEventEnd`` of the navigation and the ``first-contentful-paint`` entry.
Medians are printed with the large/baseline ratio measured in the same process (after one
warm-up open, since the first page a fresh browser opens is slower).

Goal (issue 13): the large run's report opens in under 3 s in headless Chromium.

    .venv/bin/python benchmarks/report_large.py [--items 5000] [--trajectories 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_TIMINGS_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {load: nav.loadEventEnd, dom: nav.domContentLoadedEventEnd, fcp: fcp ? fcp.startTime : null};
}"""


def open_timings(browser, path: Path, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median milliseconds to DOMContentLoaded, to load and to the first contentful paint, over ``repeats`` fresh pages."""
    samples: dict[str, list[float]] = {"dom": [], "load": [], "fcp": []}
    for _ in range(repeats):
        # bypass_csp: reading the clocks evaluates script, which a page's own CSP may forbid; the page itself is unchanged
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        try:
            page = context.new_page()
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0", timeout=30_000)
            figures = page.evaluate(_TIMINGS_JS)
        finally:
            context.close()
        for key in samples:
            if figures.get(key) is not None:
                samples[key].append(float(figures[key]))
    return {key: statistics.median(values) for key, values in samples.items() if values}


def timed(build: Callable[[Path], Path], run_dir: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    path = build(run_dir)
    return path, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--trajectories", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from support.browser import chromium_path
    from support.synthetic_run import make_synthetic_run

    from termigen_plugins.viewer.report_page import write_report_html

    pages: dict[str, Callable[[Path], Path]] = {"report.html": write_report_html}
    if (ROOT / "plugins" / "viewer" / "browse_page.py").exists():
        from termigen_plugins.viewer.browse_page import write_browse_html

        pages["browse.html"] = write_browse_html
    exe = chromium_path()
    if exe is None:
        print("no Chromium found (apt-get install chromium)")
        return 1

    with tempfile.TemporaryDirectory(prefix="termigen-bench-report-") as tmp:
        runs = {}
        for label, items, trajectories in (("baseline", 10, 3), ("large", args.items, args.trajectories)):
            started = time.perf_counter()
            runs[label] = make_synthetic_run(Path(tmp) / label, items=items, trajectories=trajectories, seed=0)
            print(f"{label}: synthetic run of {items} items, {runs[label].trajectories} trajectories "
                  f"written in {time.perf_counter() - started:.1f} s ({(Path(tmp) / label / 'run.db').stat().st_size / 1e6:.0f} MB run.db)")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"], headless=True)
            try:
                for name, build in pages.items():
                    open_timings(browser, build(runs["baseline"].run_dir), 1)  # warm-up: the first page a browser opens is slower
                    results = {}
                    for label, made in runs.items():
                        path, build_s = timed(build, made.run_dir)
                        results[label] = (build_s, path.stat().st_size, open_timings(browser, path, args.repeats))
                    print(f"\n{name}")
                    print(f"  {'':9} {'build s':>8} {'size KB':>8} {'DCL ms':>8} {'load ms':>8} {'FCP ms':>8}")
                    for label, (build_s, size, opened) in results.items():
                        print(f"  {label:9} {build_s:8.2f} {size / 1024:8.0f} {opened.get('dom', 0):8.0f} "
                              f"{opened.get('load', 0):8.0f} {opened.get('fcp', 0):8.0f}")
                    base, large = results["baseline"], results["large"]
                    ratios = [large[0] / base[0]] + [large[2].get(k, 0) / max(base[2].get(k, 1), 1e-9) for k in ("load", "fcp")]
                    print(f"  large/baseline: build x{ratios[0]:.1f}, load x{ratios[1]:.1f}, first paint x{ratios[2]:.1f}")
                    verdict = "under" if large[2].get("load", 1e9) < 3000 else "NOT under"
                    print(f"  goal: the large page loads in {large[2].get('load', float('nan')) / 1000:.2f} s: {verdict} 3 s")
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
