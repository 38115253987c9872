#!/bin/bash
# Build the jsaectl EN/DE text corpus from Debian bookworm packages, fully offline except for
# `apt-get download` (Debian's package registry).
#
#   examples/corpus/build_corpus.sh OUTDIR [WORKDIR]
#
# Writes OUTDIR/train.jsonl, OUTDIR/heldout.jsonl (one JSON document per line:
# {"text", "lang", "source", "register"}), OUTDIR/SOURCES.md (provenance and licences; the
# same table as OUTDIR/sources.json), OUTDIR/licences/<package>.copyright, OUTDIR/stats.json.
# WORKDIR (default: a temporary directory, removed afterwards) receives the .deb files and
# their unpacked contents (~500 MB).
# Then build the bundled sample with:
#   python3 examples/corpus/make_sample.py --corpus OUTDIR --out jsaectl/assets/corpus
#
# Needs: apt-get (after `apt-get update`), dpkg-deb, groff (package groff-base), python3 >= 3.10.
# Deterministic for a given set of package versions (recorded in SOURCES.md).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 1
fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
if [[ $# -ge 2 ]]; then
    WORK=$(mkdir -p "$2" && cd "$2" && pwd)
else
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi

mapfile -t PACKAGES < <(python3 "$HERE/build.py" --list-packages)
mkdir -p "$WORK/debs" "$WORK/root"
echo "downloading ${#PACKAGES[@]} packages into $WORK/debs" >&2
(cd "$WORK/debs" && apt-get download -q "${PACKAGES[@]}" >/dev/null)

# Unpack each package into its own directory so every source can find its own copyright file.
: > "$WORK/packages.tsv"
for deb in "$WORK"/debs/*.deb; do
    pkg=$(dpkg-deb -f "$deb" Package)
    printf '%s\t%s\t%s\n' "$pkg" "$(dpkg-deb -f "$deb" Version)" "$(basename "$deb")" >> "$WORK/packages.tsv"
    rm -rf "$WORK/root/$pkg"
    dpkg-deb -x "$deb" "$WORK/root/$pkg"
done

python3 "$HERE/build.py" --root "$WORK/root" --versions "$WORK/packages.tsv" --out "$OUT"
du -b "$OUT"/*.jsonl "$OUT/SOURCES.md" >&2
