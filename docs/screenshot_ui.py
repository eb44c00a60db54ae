"""Screenshots of the Prefect UI with lungcls deployed and two `retrain` runs done.

    .venv/bin/python docs/screenshot_ui.py [--out docs/images]

Needs Debian's `chromium` (apt-get install chromium). Starts, all on 127.0.0.1 and inside
a temporary folder: a Prefect server, the deployments from deployments/prefect.yaml, a
process worker; runs `retrain/nightly` through the API on a small synthetic inbox and takes
headless-Chromium screenshots of the deployment page, the run's page and the artifacts
page. Then a second batch arrives, from another site's scanner (`synth --shift`), and
`retrain/nightly` runs again: its `monitor` subflow scores the batch with the champion the
first run promoted and measures its drift; the screenshot of that run's `batch-history`
artifact (the plot) above its `drift-features` artifact (the table) is
prefect-monitoring.png. Every process it started is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers: reading a run's artifacts back

from tests.support import flow_run_artifacts, free_port  # noqa: E402

PREFECT = str(Path(sys.executable).with_name("prefect"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",  # let the single-page app fetch and render
]
SMALL = """pseudonym_key: screenshot-pseudonym-key-0123456789
work_dir: {work}
contracts: {{max_pixel_spacing_mm: 6.0}}
preprocess: {{shape: [16, 16, 16], spacing_mm: [2.5, 2.5, 2.5]}}
model: {{width: 8, depth: 2}}
train: {{epochs: 6, batch_size: 8, learning_rate: 0.003, warmup_epochs: 1}}
evaluation: {{min_patients_per_class: 1}}
promotion: {{min_sensitivity: 0.0, min_auc_lower_ci: 0.0, max_ece: 1.0, max_fold_spread: null}}
"""
# Gates any model that learned something passes (a test split of 48 phantoms has a few
# patients a class, folds of a dozen disagree by chance): the first run must promote a
# champion for the second run's monitoring to score a batch with.


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)


WINDOW = (1440, 1000)


def screenshot(url: str, path: Path, profile: Path, size: tuple[int, int] = WINDOW) -> None:
    command = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}"]
    command.append(f"--window-size={size[0]},{size[1]}")
    subprocess.run([*command, url], check=True, capture_output=True, timeout=120)
    print(f"wrote {path}")


def stacked(top: Path, bottom: Path, path: Path) -> None:
    """One image of two screenshots, one above the other (Pillow, which matplotlib needs)."""
    from PIL import Image

    with Image.open(top) as upper, Image.open(bottom) as lower:
        width = max(upper.width, lower.width)
        image = Image.new("RGB", (width, upper.height + lower.height), "white")
        image.paste(upper, (0, 0))
        image.paste(lower, (0, upper.height))
        image.save(path, optimize=True)
    print(f"wrote {path}")


def champion_version(config: Path, root: str) -> int | None:
    """The version the alias `champion` points at, if any."""
    from lungcls.config import load_settings
    from lungcls.io.storage import Storage
    from lungcls.registry.aliases import read_alias
    from lungcls.registry.promote import CHAMPION

    settings = load_settings(config, root=root)
    return read_alias(Storage.from_settings(settings), settings.model.name, CHAMPION).version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-", dir=REPO / ".lungcls-work") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PREFECT_HOME": f"{tmp}/prefect",
            "PREFECT_API_URL": f"{base}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        processes = []
        try:
            server = subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(server)
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{base}/api/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            run = {"env": env, "cwd": REPO, "check": True, "capture_output": True}
            subprocess.run(
                [PREFECT, "work-pool", "create", "lungcls-process", "-t", "process"], **run
            )
            deploy = [
                "--no-prompt",
                "deploy",
                "--all",
                "--prefect-file",
                "deployments/prefect.yaml",
            ]
            subprocess.run([PREFECT, *deploy], **run)
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "lungcls-process"],
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.insert(0, worker)  # stopped before the server

            config = Path(tmp) / "lungcls.yaml"
            config.write_text(SMALL.format(work=f"{tmp}/work"))
            lungcls = [sys.executable, "-m", "lungcls.cli", "--config", str(config)]
            synth = ["synth", "--batch", "b1", "--scans", "48", "--slices", "20", "--rows", "64"]
            synth += [
                "--columns",
                "64",
                "--pixel-spacing",
                "5.6",
                "--slice-spacing",
                "5",
                "--seed",
                "21",
            ]
            subprocess.run([*lungcls, "--root", f"{tmp}/root", *synth], **run)
            os.environ.update(
                PREFECT_API_URL=env["PREFECT_API_URL"], PREFECT_HOME=env["PREFECT_HOME"]
            )
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment

            params = {"params": {"config_file": str(config), "root": f"{tmp}/root"}}
            flow_run = run_deployment("retrain/nightly", parameters=params, timeout=900)
            print(f"retrain run {flow_run.name}: {flow_run.state.name if flow_run.state else '?'}")
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("retrain/nightly")
            profile = Path(tmp) / "chromium"
            screenshot(
                f"{base}/deployments/deployment/{deployment.id}",
                out / "prefect-deployment.png",
                profile,
            )
            screenshot(
                f"{base}/runs/flow-run/{flow_run.id}", out / "prefect-retrain-run.png", profile
            )
            screenshot(f"{base}/artifacts", out / "prefect-artifacts.png", profile)

            if champion_version(config, f"{tmp}/root") is None:
                raise SystemExit("the first retrain run promoted no champion: see its run page")
            # The second batch: other patients, from a miscalibrated scanner of another site.
            shifted = [*synth[:2], "b2", *synth[3:]]
            shifted[shifted.index("--scans") + 1] = "32"
            shifted[shifted.index("--seed") + 1] = "22"
            shifted += ["--shift", "--shift-hu-offset", "300"]
            subprocess.run([*lungcls, "--root", f"{tmp}/root", *shifted], **run)
            second = run_deployment("retrain/nightly", parameters=params, timeout=900)
            print(f"retrain run {second.name}: {second.state.name if second.state else '?'}")
            artifacts = {key: found[0] for key, found in flow_run_artifacts(second.id).items()}
            pages = []
            # Wide enough for the drift table's effect and verdict columns, tall enough for
            # the history's plot and all of the table's rows.
            for key, size in (("batch-history", (2000, 1100)), ("drift-features", (2000, 1250))):
                if key not in artifacts:
                    raise SystemExit(f"the second retrain run made no {key!r} artifact")
                page = Path(tmp) / f"{key}.png"
                url = f"{base}/artifacts/artifact/{artifacts[key].id}"
                screenshot(url, page, profile, size)
                pages.append(page)
            stacked(*pages, out / "prefect-monitoring.png")
        finally:
            for process in processes:
                stop(process)


if __name__ == "__main__":
    main()
