#!/usr/bin/env bash
# Install the single-node VictoriaMetrics server used by the integration tests.
#
# The binary comes from Debian's next suite (trixie, package `victoria-metrics`), fetched
# from the mirror this machine's apt already uses (scripts/debian-package.sh), and lands in
# <repo>/.tools/victoria-metrics/victoria-metrics. The system's apt configuration is left
# untouched. Re-running is a no-op once the binary is there.
#
# Environment:
#   VM_SUITE   Debian suite to take the package from (default: trixie)
#   VM_FORCE=1 reinstall even if the binary is already present
#   VM_APT_ETC directory whose sources.list{,.d} name the mirror (default: /etc/apt)
set -euo pipefail

SUITE="${VM_SUITE:-trixie}"
PACKAGE="victoria-metrics"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
dest_dir="$repo_root/.tools/victoria-metrics"
dest="$dest_dir/victoria-metrics"

log() { printf 'victoria-metrics.sh: %s\n' "$*" >&2; }
die() { printf 'victoria-metrics.sh: error: %s\n' "$*" >&2; exit 1; }

if [[ -x "$dest" && "${VM_FORCE:-0}" != 1 ]]; then
    if "$dest" -version >/dev/null 2>&1; then
        echo "victoria-metrics already installed: $dest ($(cat "$dest_dir/package-version" 2>/dev/null || echo "unknown version"))"
        exit 0
    fi
    log "existing $dest does not run (-version failed); reinstalling"
fi

unpack="$(mktemp -d "${TMPDIR:-/tmp}/victoria-metrics.XXXXXX")"
trap 'rm -rf "$unpack"' EXIT
DEBIAN_APT_ETC="${VM_APT_ETC:-/etc/apt}" "$script_dir/debian-package.sh" "$PACKAGE" "$SUITE" "$unpack" >/dev/null

bin=""
for candidate in usr/bin/victoria-metrics usr/sbin/victoria-metrics usr/bin/victoria-metrics-prod; do
    if [[ -f "$unpack/$candidate" ]]; then bin="$unpack/$candidate"; break; fi
done
if [[ -z "$bin" ]]; then
    bin="$(find "$unpack" -type f -name 'victoria-metrics*' -perm -u+x | head -n1)"
fi
[[ -n "$bin" ]] || die "no victoria-metrics executable inside the $PACKAGE package; contents:
$(cd "$unpack" && find . -type f | head -50)"

mkdir -p "$dest_dir"
install -m 0755 "$bin" "$dest.tmp" || die "could not copy the binary to $dest_dir"
if ! version="$("$dest.tmp" -version 2>&1)"; then
    rm -f "$dest.tmp"
    die "the unpacked binary does not run ('-version' failed): $version"
fi
mv -f "$dest.tmp" "$dest"
# Debian's build leaves `-version` empty, so remember the package version next to it.
cp "$unpack/package-version" "$dest_dir/package-version"

echo "victoria-metrics installed: $dest ($(cat "$dest_dir/package-version"))"
