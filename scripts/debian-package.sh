#!/usr/bin/env bash
# Download one Debian package from a given suite and unpack it (dpkg -x) into a directory,
# without installing it and without touching the system's apt configuration.
#
#   scripts/debian-package.sh PACKAGE SUITE DEST_DIR
#
# The package comes from the Debian mirror this machine's apt already uses (found in
# /etc/apt/sources.list{,.d}); apt runs against a temporary sources list, state and cache.
# DEST_DIR receives the package's file tree (DEST_DIR/usr/bin/...) and a file
# `package-version` ("PACKAGE VERSION (SUITE)"). Prints the version line on success.
#
# Environment:
#   DEBIAN_APT_ETC  directory whose sources.list{,.d} name the mirror (default: /etc/apt)
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: $0 PACKAGE SUITE DEST_DIR" >&2; exit 2; }
PACKAGE="$1"
SUITE="$2"
DEST="$3"

log() { printf 'debian-package.sh: %s\n' "$*" >&2; }
die() { printf 'debian-package.sh: error: %s\n' "$*" >&2; exit 1; }

for tool in apt-get dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found (this script needs a Debian-based system)"
done

# --- Find the Debian mirror the system already uses ------------------------------------
# Prefer an entry for the system's own release (e.g. bookworm) over -updates/-security
# entries and third-party repositories.
apt_etc="${DEBIAN_APT_ETC:-${VM_APT_ETC:-/etc/apt}}"  # read-only; overridable for testing the parser
codename=""
if [[ -r /etc/os-release ]]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi

# Print "URI<TAB>suite" for every enabled `deb` entry, one-line and deb822 formats.
list_entries() {
    local f
    shopt -s nullglob
    local one_line=() deb822=()
    if [[ -r "$apt_etc/sources.list" ]]; then one_line+=("$apt_etc/sources.list"); fi
    one_line+=("$apt_etc"/sources.list.d/*.list)
    deb822+=("$apt_etc"/sources.list.d/*.sources)
    shopt -u nullglob

    for f in "${one_line[@]}"; do
        [[ -r "$f" ]] || continue
        # deb [opt=val ...] URI suite component...
        sed -e 's/#.*//' "$f" | awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (i + 1 <= NF) print $i "\t" $(i + 1)
            }'
    done

    for f in "${deb822[@]}"; do
        [[ -r "$f" ]] || continue
        # Stanzas separated by blank lines; fields Types, URIs, Suites, Enabled.
        awk '
            function flush(   n, m, i, j, u, s) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
                    n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (u[i] != "" && s[j] != "") print u[i] "\t" s[j]
                }
                types = ""; uris = ""; suites = ""; enabled = ""; last = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {   # continuation line
                if (last == "uris") uris = uris " " $0
                else if (last == "suites") suites = suites " " $0
                next
            }
            {
                key = tolower($0); sub(/:.*/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                last = key
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = val
            }
            END { flush() }' "$f"
    done
}

entries="$(list_entries || true)"
[[ -n "$entries" ]] || die "no enabled 'deb' entries found in $apt_etc/sources.list, $apt_etc/sources.list.d/*.list or $apt_etc/sources.list.d/*.sources; cannot tell which Debian mirror to use"

mirror=""
if [[ -n "$codename" ]]; then
    mirror="$(awk -F'\t' -v c="$codename" '$2 == c { print $1; exit }' <<<"$entries")"
fi
if [[ -z "$mirror" ]]; then
    # Any entry whose suite is a plain Debian release name (no -security / -updates).
    mirror="$(awk -F'\t' '$2 ~ /^(bookworm|trixie|forky|sid|unstable|testing|stable|bullseye)$/ { print $1; exit }' <<<"$entries")"
fi
[[ -n "$mirror" ]] || die "could not find a Debian archive mirror among the apt sources (looked for suite '${codename:-<unknown>}'); entries seen:
$entries"
mirror="${mirror%/}"
log "using mirror $mirror (suite $SUITE) from the system's apt sources"

# --- Fetch the package with a private apt configuration ---------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/debian-package.XXXXXX")"
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/download"
chmod 755 "$tmp" "$tmp/download"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed_by=""
[[ -r "$keyring" ]] && signed_by="[signed-by=$keyring] "
printf 'deb %s%s %s main\n' "$signed_by" "$mirror" "$SUITE" >"$tmp/sources.list"

apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
    -o "Debug::NoLocking=true"
)

log "apt-get update ($SUITE main)"
if ! apt-get -q "${apt_opts[@]}" -o APT::Update::Error-Mode=any update >"$tmp/update.log" 2>&1; then
    cat "$tmp/update.log" >&2
    die "apt-get update for '$mirror $SUITE main' failed (see output above)"
fi

log "apt-get download $PACKAGE"
if ! (cd "$tmp/download" && apt-get -q "${apt_opts[@]}" download "$PACKAGE") >"$tmp/download.log" 2>&1; then
    cat "$tmp/download.log" >&2
    die "apt-get download $PACKAGE from '$mirror $SUITE' failed (see output above)"
fi

shopt -s nullglob
debs=("$tmp/download/${PACKAGE}"_*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || die "expected one ${PACKAGE}_*.deb after apt-get download, found ${#debs[@]} in $tmp/download"
deb="${debs[0]}"
log "downloaded $(basename "$deb")"

mkdir -p "$DEST"
dpkg -x "$deb" "$DEST" || die "dpkg -x $(basename "$deb") failed"
version_line="$PACKAGE $(dpkg-deb -f "$deb" Version) ($SUITE)"
echo "$version_line" >"$DEST/package-version"
echo "$version_line"
