#!/usr/bin/env python3
"""The declared rust-version must be at least the highest rust-version of any crate the
library builds with, for the default features and for the `otlp` and `console` sets (the ones
that pull the largest trees: tonic, hyper, reqwest). Reads `cargo metadata` (every package's
rust-version) and `cargo tree` (which packages each feature set really builds, normal
dependencies only: dev-dependencies are not the users')."""
import json
import subprocess
import sys


def version_key(v):
    # "1.88" and "1.88.0" are the same version.
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(
        subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--locked"])
    )
    ours = next(p for p in meta["packages"] if p["name"] == "stallscope")
    declared = ours.get("rust_version")
    if not declared:
        sys.exit("Cargo.toml declares no rust-version")
    versions = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"]}
    failed = False
    for features in (["--features", "stacks"], ["--features", "otlp"], ["--features", "console"]):
        tree = subprocess.check_output(
            ["cargo", "tree", "--locked", "-e", "normal", "--prefix", "none",
             "--format", "{p}", *features],
            text=True,
        )
        needs = []
        for line in tree.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            name, version = parts[0], parts[1].lstrip("v")
            rust = versions.get((name, version))
            if rust:
                needs.append((version_key(rust), rust, f"{name} {version}"))
        highest = max(needs)
        status = "ok" if version_key(declared) >= highest[0] else "TOO LOW"
        print(f"{' '.join(features)}: highest rust-version {highest[1]} ({highest[2]}); "
              f"declared {declared}: {status}")
        failed |= status != "ok"
    if failed:
        sys.exit("raise rust-version in Cargo.toml to the highest above")


main()
