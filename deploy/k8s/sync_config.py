"""Write the config directory's file list into the Kubernetes manifests.

A ConfigMap holds flat keys, so every file of ``config/`` (top level, ``triggers/``,
``segments/``) is listed in ``kustomization.yaml``'s ``cdp-config`` generator and in the
volume items of every pod that mounts it (flow, gateway), which map the keys back to the
directory layout. Run ``python deploy/k8s/sync_config.py`` after adding or removing a config
file;
``tests/test_deploy.py`` fails while the lists and the directory differ.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
FOLDERS = ("", "triggers", "segments")


def config_files() -> list[str]:
    """Config files relative to ``config/``: top level first, then each folder, sorted."""
    cfg = ROOT / "config"
    out = []
    for folder in FOLDERS:
        base = cfg / folder if folder else cfg
        out += sorted(str(p.relative_to(cfg)) for p in base.glob("*.yaml"))
    return out


def key_of(path: str) -> str:
    return path.replace("/", ".")


def sync() -> None:
    files = config_files()
    kust = K8S / "kustomization.yaml"
    text = kust.read_text()
    listing = "".join(f"      - {key_of(f)}=../../config/{f}\n" for f in files)
    text = re.sub(r"(  - name: cdp-config\n    files:\n)(?:      - .*\n)*",
                  lambda m: m.group(1) + listing, text)
    kust.write_text(text)
    items = "".join(f"            - key: {key_of(f)}\n              path: {f}\n" for f in files)
    for manifest in sorted(K8S.glob("*.yaml")):  # every pod that mounts the config
        text = manifest.read_text()
        new = re.sub(r"(            name: cdp-config\n            items:\n)"
                     r"(?:            - key: .*\n              path: .*\n)*",
                     lambda m: m.group(1) + items, text)
        if new != text:
            manifest.write_text(new)


if __name__ == "__main__":
    sync()
