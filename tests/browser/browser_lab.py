"""JupyterLab in a real browser, as a learner uses it: the server, the browser and the checks.

`LabServer` starts `jupyter lab` from the running Python's environment (the course's .venv under
`make test-browser`) on 127.0.0.1, on a free port, with a random token and its own temporary
Jupyter config, data, runtime, settings and workspace folders, and stops it by its process id,
kernels included. `launch_chromium` starts the system's Chromium headless through Playwright
(`playwright install` would download a browser; the course never downloads anything).

The checks run in the page. `stored_output_problems` lists what a learner would see wrong in a
notebook's stored outputs: error outputs, stderr boxes, images that do not load, maths that
MathJax could not typeset. `run_all` clicks Run > Run All Cells and waits for the kernel to go idle;
`run_problems` lists the cells that did not run or ended in an error.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

CHROMIUM = os.environ.get("LLM_COURSE_CHROMIUM", "/usr/bin/chromium")
# the machine's network is closed: nothing in the browser may try to reach it
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# User settings of the test's own lab (a temporary folder, never the learner's):
# no autosave, so that running a chapter never writes to the repository's notebook;
# every cell attached to the page, so that every stored output is in the DOM to be checked.
TEST_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
STDERR_MIME = "application/vnd.jupyter.stderr"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    """`jupyter lab` on `root` (the folder its file browser shows), from this Python's environment."""

    root: Path
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 180.0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    process: subprocess.Popen | None = None
    home: Path | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, relpath: str) -> str:
        # ?reset: an empty workspace, so that nothing opened before comes back with it
        return f"{self.url}/lab/tree/{relpath}?reset&token={self.token}"

    def start(self) -> LabServer:
        self.home = Path(tempfile.mkdtemp(prefix="llm-course-lab-"))
        dirs = {name: self.home / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
        for folder in dirs.values():
            folder.mkdir()
        for plugin, values in TEST_USER_SETTINGS.items():
            target = dirs["settings"] / f"{plugin}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PLATFORM_DIRS="1",
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_CONFIG_PATH", None)
        self.port = free_port()
        self.log_path = self.home / "server.log"
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the notebook's model for the checks
            "--ServerApp.terminals_enabled=False",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"jupyter lab exited with {self.process.returncode}:\n{self.log()}"
                self.stop()
                raise RuntimeError(message)
            try:
                self.api("GET", "status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        message = f"jupyter lab did not answer within {self.startup_timeout:.0f} s:\n{self.log()}"
        self.stop()
        raise TimeoutError(message)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""

    def api(self, method: str, path: str, timeout: float = 30.0):
        request = urllib.request.Request(
            f"{self.url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_processes(self) -> list[psutil.Process]:
        """The server's child processes (its kernels), while it runs."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def shut_down_kernels(self) -> list[str]:
        """End every session and kernel, e.g. between two chapters; returns the processes that outlived them.

        A kernel's own children (a subprocess a notebook started) must end with it; any still alive
        10 s later is killed and reported.
        """
        children = self.kernel_processes()
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")
        for kernel in self.api("GET", "kernels"):
            self.api("DELETE", f"kernels/{kernel['id']}")
        return _reap(children, "its kernel")

    def stop(self) -> list[str]:
        """Stop the server by its process id, then any process it left; returns what had to be killed."""
        leftovers: list[str] = []
        if self.process is None:
            return leftovers
        children = self.kernel_processes()
        if self.process.poll() is None:
            try:
                self.shut_down_kernels()
            except (urllib.error.URLError, OSError):
                pass
            self.process.send_signal(signal.SIGTERM)  # jupyter_server shuts its kernels down on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                leftovers.append(f"jupyter lab (pid {self.process.pid}) ignored SIGTERM")
                self.process.kill()
                self.process.wait(timeout=30)
        leftovers += _reap(children, "the server")
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        self.process = None
        return leftovers

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _reap(processes: list[psutil.Process], owner: str, timeout: float = 10.0) -> list[str]:
    """Wait for `processes` to end; kill and describe those still alive after `timeout` seconds."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    described = []
    for proc in alive:
        try:
            described.append(f"pid {proc.pid} ({' '.join(proc.cmdline()[:4])}) outlived {owner}")
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return described


def launch_chromium(playwright, user_data_dir: Path):
    """Headless system Chromium with a fresh profile (a persistent context is how Playwright takes one)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM}: `make test-browser` installs it (apt-get install chromium)")
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
        service_workers="block",
    )


# ---- in the page ---------------------------------------------------------------------------------

_CURRENT = "window.jupyterapp.shell.currentWidget"

JS_NOTEBOOK_READY = f"""() => {{
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  const nb = {_CURRENT};
  if (!nb || !nb.content || !nb.content.model || !nb.context || !nb.context.isReady) return false;
  const cells = nb.content.widgets;
  if (cells.length !== nb.content.model.cells.length || cells.length === 0) return false;
  return cells.every(c => c.isAttached && (c.model.type !== 'markdown' || c.rendered));
}}"""

JS_KERNEL_STATUS = f"""() => {{
  const nb = {_CURRENT};
  const kernel = nb && nb.sessionContext.session && nb.sessionContext.session.kernel;
  return kernel ? kernel.status : 'none';
}}"""

# Where the typeset maths stands: containers made, errors, raw TeX left in the prose.
JS_MATH_STATE = r"""() => {
  const root = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!root) return null;
  const problems = [];
  const cells = [...root.querySelectorAll(':scope .jp-Cell')];
  cells.forEach((cell, i) => {
    for (const el of cell.querySelectorAll('mjx-merror, .MathJax_Error, .katex-error, [data-mjx-error]')) {
      problems.push(`cell ${i}: maths error: ${(el.getAttribute('data-mjx-error') || el.textContent).slice(0, 120)}`);
    }
    // MathJax's noundefined extension draws an unknown macro as its name, in red
    for (const el of cell.querySelectorAll('mjx-container [style*="color: red"], mjx-container [mathcolor="red"]')) {
      problems.push(`cell ${i}: maths: undefined macro ${el.textContent.slice(0, 60)}`);
    }
    for (const md of cell.querySelectorAll('.jp-RenderedMarkdown, .jp-RenderedLatex')) {
      const copy = md.cloneNode(true);
      copy.querySelectorAll('mjx-container, code, pre, script, style').forEach(n => n.remove());
      const left = copy.textContent.match(/\$\$|\\(frac|sum|mathbf|mathrm|sqrt|left|right|begin|end|cdot|top|operatorname)\b|\\\(|\\\[/);
      if (left) problems.push(`cell ${i}: maths not typeset: ...${copy.textContent.slice(Math.max(0, left.index - 40), left.index + 40)}...`);
    }
  });
  return {containers: root.querySelectorAll('mjx-container').length, problems};
}"""

JS_STORED_PROBLEMS = f"""async () => {{
  const nb = {_CURRENT};
  const problems = [];
  const root = nb.content.node;
  const cells = nb.content.widgets;
  for (let i = 0; i < cells.length; i++) {{
    const cell = cells[i];
    if (cell.model.type === 'code') {{
      const outputs = cell.model.outputs.toJSON();
      for (const out of outputs) {{
        if (out.output_type === 'error') problems.push(`cell ${{i}}: error output ${{out.ename}}: ${{String(out.evalue).slice(0, 120)}}`);
        if (out.output_type === 'stream' && out.name === 'stderr')
          problems.push(`cell ${{i}}: stderr output: ${{JSON.stringify(String(out.text).slice(0, 120))}}`);
      }}
    }}
    const boxes = cell.node.querySelectorAll('.jp-RenderedText[data-mime-type="{STDERR_MIME}"]');
    if (boxes.length) problems.push(`cell ${{i}}: ${{boxes.length}} stderr box(es) on the page: ${{JSON.stringify(boxes[0].textContent.slice(0, 120))}}`);
    for (const img of cell.node.querySelectorAll('img')) {{
      if (!img.complete) await new Promise(r => {{ img.onload = img.onerror = r; setTimeout(r, 10000); }});
      if (!(img.naturalWidth > 0 && img.naturalHeight > 0))
        problems.push(`cell ${{i}}: image did not load (${{(img.getAttribute('src') || '').slice(0, 60)}})`);
    }}
    for (const svg of cell.node.querySelectorAll('.jp-RenderedSVG svg, .jp-RenderedSVG img')) {{
      const box = svg.getBoundingClientRect();
      if (!(box.width > 0 && box.height > 0)) problems.push(`cell ${{i}}: SVG output has no size`);
    }}
  }}
  return problems;
}}"""

JS_RUN_STATE = f"""() => {{
  const nb = {_CURRENT};
  const cells = nb.content.widgets.filter(c => c.model.type === 'code');
  return cells.map(c => ({{
    index: nb.content.widgets.indexOf(c),
    source: c.model.sharedModel.getSource().trim().length > 0,
    count: c.model.executionCount,
    busy: c.promptNode ? c.promptNode.textContent.includes('*') : false,
    outputs: c.model.outputs.toJSON().map(o => ({{type: o.output_type, name: o.name || null,
      ename: o.ename || null, evalue: o.evalue ? String(o.evalue).slice(0, 160) : null,
      text: o.text ? String(o.text) : null}})),
  }}));
}}"""


def wait_for(page, script: str, timeout: float, what: str, poll: float = 0.5):
    """Poll `script` in the page until it returns something truthy; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (after {timeout:.0f} s)")
        time.sleep(poll)


def open_notebook(page, server: LabServer, relpath: str, timeout: float = 180.0) -> None:
    """Load JupyterLab on `relpath`, wait until every cell is rendered, the kernel is idle and the maths is typeset."""
    page.goto(server.notebook_url(relpath), wait_until="domcontentloaded", timeout=timeout * 1000)
    wait_for(page, JS_NOTEBOOK_READY, timeout, f"{relpath}: the notebook did not finish rendering")
    wait_for(page, f"() => ({JS_KERNEL_STATUS})() === 'idle'", timeout, f"{relpath}: the kernel did not become idle")
    settle_maths(page, timeout=60.0)


def settle_maths(page, timeout: float, quiet: float = 2.0) -> dict:
    """Wait until MathJax stops adding typeset formulas for `quiet` seconds."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        state = page.evaluate(JS_MATH_STATE)
        count = state["containers"] if state else None
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return state
        time.sleep(0.25)
    return page.evaluate(JS_MATH_STATE)


def stored_output_problems(page) -> list[str]:
    """What is wrong in the open notebook's outputs as the page shows them (empty: nothing)."""
    problems = list(page.evaluate(JS_STORED_PROBLEMS))
    state = page.evaluate(JS_MATH_STATE)
    problems += state["problems"] if state else ["no notebook on the page"]
    return problems


def news_popup(page) -> str | None:
    """The text of JupyterLab's 'official Jupyter news' toast, if one shows."""
    for toast in page.locator(".Toastify__toast").all():
        text = toast.inner_text()
        if "news" in text.lower():
            return text
    return None


def run_all(page, timeout: float, quiet: float = 3.0) -> float:
    """Run > Run All Cells from the menu bar, then wait until the kernel is idle and no cell is queued.

    Returns the seconds it took. Done means: the kernel was seen busy (or 10 s passed), and since then it
    has been idle with no cell showing [*] for `quiet` seconds (or idle for 10 s, whatever the prompts say:
    Run All stops at an error and leaves the cells after it unrun).
    """
    started = time.monotonic()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    seen_busy, idle_since, quiet_since = False, None, None
    while time.monotonic() - started < timeout:
        now = time.monotonic()
        idle = page.evaluate(JS_KERNEL_STATUS) == "idle"
        queued = any(c["busy"] for c in page.evaluate(JS_RUN_STATE))
        seen_busy = seen_busy or not idle or queued
        idle_since = (idle_since or now) if idle else None
        quiet_since = (quiet_since or now) if idle and not queued else None
        if seen_busy or now - started > 10:
            if quiet_since and now - quiet_since >= quiet or idle_since and now - idle_since >= 10:
                return now - started
        time.sleep(0.25)
    raise TimeoutError(f"Run All did not finish within {timeout:.0f} s")


# one tqdm bar: "desc: 40%|####      | 2/5 [00:01<00:02, 1.9it/s]" or, without a total, "12it [00:01, 9.5it/s]"
PROGRESS_BAR = re.compile(r"\d+%\|[^|]*\|\s*\d+(\.\d+)?[kMG]?/\d+|\d+(\.\d+)?[kMG]?it \[")


def is_progress_bar(text: str) -> bool:
    """Whether stderr `text` is nothing but progress-bar redraws (every non-blank piece between \\r and \\n)."""
    pieces = [piece for piece in re.split(r"[\r\n]", text) if piece.strip()]
    return all(PROGRESS_BAR.search(piece) for piece in pieces)


def run_problems(page, *, allow_progress_bars: bool = True) -> list[str]:
    """After `run_all`: cells that did not run, ran out of order, or ended in an error or wrote to stderr.

    A progress bar drawn on stderr while a cell runs is what a learner should see (the guide asks only
    that the stored notebook keep no stderr), so during a run it is allowed; any other stderr, a
    warning for instance, is a problem.
    """
    cells = page.evaluate(JS_RUN_STATE)
    problems = []
    expected = 1
    for cell in cells:
        if not cell["source"]:
            continue
        for out in cell["outputs"]:
            if out["type"] == "error":
                problems.append(f"cell {cell['index']}: {out['ename']}: {out['evalue']}")
            elif out["type"] == "stream" and out["name"] == "stderr":
                if not (allow_progress_bars and is_progress_bar(out["text"] or "")):
                    problems.append(f"cell {cell['index']}: wrote to stderr: {(out['text'] or '')[:160]!r}")
        if cell["count"] is None:
            problems.append(f"cell {cell['index']}: did not run")
        elif cell["count"] != expected:
            problems.append(f"cell {cell['index']}: execution count {cell['count']}, expected {expected}")
        expected += 1
    return problems


def screenshot_notebook(page, path: Path, max_height: int = 16000) -> None:
    """The whole notebook in one image (up to `max_height` pixels): the page is made as tall as the notebook."""
    height = page.evaluate(
        "() => { const o = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');"
        " if (!o) return 0; o.scrollTop = 0; return o.scrollHeight; }"
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height + 200, max_height))})
    try:
        page.wait_for_timeout(500)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
