"""The HTML report in a real browser: headless Chromium (Debian's `chromium`) opens it with no
console message, and a screenshot shows the metrics table and the plots. CI installs Chromium
(and fails without it); elsewhere the test skips when it is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tracekit.datasets.build import BuildOptions, build
from tracekit.evals.plots import MAIN_COLOR
from tracekit.evals.run import RunOptions, evaluate
from tracekit.programs import sources

ROOT = Path(__file__).resolve().parent.parent
HEADER_RGB = (0xdd, 0xe6, 0xf3)  # th background in evals/templates/report.html.jinja
PLOT_RGB = tuple(int(MAIN_COLOR[i:i + 2], 16) for i in (1, 3, 5))

pytestmark = pytest.mark.browser


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_or_fail("chromium is not installed (apt-get install -y chromium)")
    return found


def open_in_chromium(page: Path, screenshot: Path) -> list[str]:
    """Screenshot `page`; return the console messages Chromium logged while loading it."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,2400", f"--screenshot={screenshot}", "--enable-logging=stderr",
         "--v=0", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def pixels_near(screenshot: Path, rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    from PIL import Image

    image = Image.open(screenshot).convert("RGB")
    return sum(count for count, color in image.getcolors(image.width * image.height)
               if all(abs(a - b) <= tolerance for a, b in zip(color, rgb)))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    build(sources.python_files([ROOT / "data" / "programs"]), base / "data", BuildOptions(),
          workers=2)
    evaluate(RunOptions(str(base / "data"), "teacher-forced", "copy"), base / "eval")
    return base / "eval" / "report.html"


def test_the_report_renders_its_table_and_plots_without_console_errors(report, tmp_path):
    messages = open_in_chromium(report, tmp_path / "report.png")
    assert messages == []
    assert pixels_near(tmp_path / "report.png", HEADER_RGB, 0) > 3000  # the table's header row
    assert pixels_near(tmp_path / "report.png", PLOT_RGB) > 3000  # bars and lines of the plots


def test_the_checks_see_a_broken_page(report, tmp_path):
    """The same checks fail on a page with a script error and plots that do not decode."""
    broken = tmp_path / "broken.html"
    page = report.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA")
    broken.write_text(page.replace("</body>", "<script>undefined_function()</script></body>"))
    messages = open_in_chromium(broken, tmp_path / "broken.png")
    assert any("undefined_function" in m for m in messages)
    assert pixels_near(tmp_path / "broken.png", PLOT_RGB) < 100


LINE_PROBE = """<script>
document.querySelectorAll("details").forEach(d => d.open = true);
const steps = [...document.querySelectorAll("table.trace td:first-child")]
  .filter(td => td.textContent.length >= 2);
const lines = td => { const r = document.createRange(); r.selectNodeContents(td);
                      return r.getClientRects().length; };
document.body.dataset.steps = steps.length;
document.body.dataset.wrapped = steps.filter(td => lines(td) > 1).length;
</script></body>"""


def test_two_digit_step_numbers_stay_on_one_line(report, tmp_path):
    """Every program opened, Chromium lays the page out: no "#" cell of two or more digits
    breaks over lines (the trace table's cells break anywhere, which split "12" in two)."""
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", LINE_PROBE))
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          "--window-size=1280,2400", "--dump-dom", probe.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    counts = dict(re.findall(r'data-(steps|wrapped)="(\d+)"', dom))
    assert int(counts["steps"]) > 20 and counts["wrapped"] == "0", counts
