"""Reproduce ``docs/status-page.png``: a real ``bnserve serve`` with some traffic, in headless
Chromium (Debian package ``chromium``).

    python scripts/screenshot_status.py [--out docs/status-page.png]

The server runs on a copy of the bundled repository in which every model taps every batch
(``[drift] max_overhead = 1.0``, so the picture does not depend on timing). Traffic:

- ``digits``: recalibrated on contrast-shifted digits (version 2), then served that shift: its
  new version stays near the no-shift baseline;
- ``digits_torch``: served the same shift without recalibration: drift far above baseline;
- ``wine`` and ``digits_ln``: served their own test split: near baseline;
- the other models get no traffic ("no traffic yet").
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repository's packages, tests included

from service.examples.data import corrupt, load_digits_split, load_wine_split  # noqa: E402
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, start_server  # noqa: E402
from tests.helpers import infer_body  # noqa: E402
from tests.recalibration.recalibration_support import npy_body  # noqa: E402

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
]


def tap_every_batch(models: Path) -> None:
    for config in models.glob("*/config.toml"):
        text = config.read_text()
        text = re.sub(r"\[drift\]\n", "[drift]\nmax_overhead = 1.0\n", text)
        if "max_overhead" not in text:
            text += "\n[drift]\nmax_overhead = 1.0\n"
        config.write_text(text)


def send(client: httpx.Client, model: str, x: np.ndarray, batch: int = 32) -> None:
    for start in range(0, len(x), batch):
        body = infer_body(x[start : start + batch].astype(np.float32))
        client.post(f"/v2/models/{model}/infer", content=body).raise_for_status()


def wait_for_taps(client: httpx.Client, models: list[str], timeout: float = 30.0) -> None:
    """Until every batch served so far is tapped and every baseline is ready."""
    deadline = time.monotonic() + timeout
    for model in models:
        while time.monotonic() < deadline:
            body = client.get(f"/v2/models/{model}/drift").json()
            tapped = body["batches_tapped"] == body["batches_seen"]
            if tapped and all(layer["baseline"] is not None for layer in body["layers"]):
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"drift of {model} not settled after {timeout} s")


def drive(url: str) -> None:
    digits = load_digits_split()[2]  # the test split, (719, 1, 8, 8)
    shifted = corrupt(digits, "contrast", 5)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/x-npy"}
    with httpx.Client(base_url=url, timeout=60.0) as client:
        response = client.post(
            "/v2/models/digits/recalibrate", content=npy_body(shifted), headers=admin
        )
        response.raise_for_status()
        send(client, "digits", shifted)
        send(client, "digits_torch", shifted)
        send(client, "digits_ln", digits)
        send(client, "wine", load_wine_split()[2])
        wait_for_taps(client, ["digits", "digits_torch", "digits_ln", "wine"])


def screenshot(url: str, out: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    parser.add_argument("--size", default="1200,1400", help="browser window, WIDTH,HEIGHT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(BUNDLED_MODELS, models)
        tap_every_batch(models)
        server = start_server(models, Path(tmp) / "server.log")
        try:
            drive(server.url)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(f"{server.url}/", args.out, args.size)
        finally:
            server.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
