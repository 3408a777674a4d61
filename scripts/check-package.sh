#!/usr/bin/env bash
# The .crate holds the library, its docs and licenses only (no compose stack, deploy files,
# scripts, tests or examples), and `cargo publish --dry-run` packages and builds it without a
# warning.
set -euo pipefail
cd "$(dirname "$0")/.."
list=$(cargo package --list --allow-dirty)
unexpected=$(echo "$list" | grep -vE '^(src/.*\.rs|docs/.*\.md|README\.md|CHANGELOG\.md|LICENSE-MIT|LICENSE-APACHE|Cargo\.toml|Cargo\.toml\.orig|Cargo\.lock|\.cargo_vcs_info\.json)$' || true)
if [ -n "$unexpected" ]; then
  echo "files in the package that do not belong there:"; echo "$unexpected"; exit 1
fi
for required in LICENSE-MIT LICENSE-APACHE CHANGELOG.md README.md src/lib.rs; do
  echo "$list" | grep -qx "$required" || { echo "missing from the package: $required"; exit 1; }
done
out=$(cargo publish --dry-run --allow-dirty --target-dir target/package-check 2>&1) || {
  echo "$out"; exit 1; }
# cargo names each test and example the include list leaves out ("ignoring test `x` as
# `tests/x.rs` is not included in the published package", rust-lang/cargo#14290): that is the
# list doing its job. Every other warning fails.
warnings=$(echo "$out" | grep -i '^warning' \
  | grep -v 'aborting upload due to dry run' \
  | grep -vE '^warning: ignoring (test|example|bench) `[^`]+` as `(tests|examples|benches)/[^`]+` is not included in the published package$' || true)
if [ -n "$warnings" ]; then
  echo "cargo publish --dry-run warned:"; echo "$warnings"; exit 1
fi
echo "ok: $(echo "$list" | wc -l) files in the package, publish dry run clean"
