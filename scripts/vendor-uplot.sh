#!/usr/bin/env bash
# Refreshes the charting library the dashboard embeds (ui/vendor/): the
# built uPlot files and their license, from the npm registry. The files are
# checked in, so building stepstore needs neither Node nor this script.
# Usage: scripts/vendor-uplot.sh [version]   (default: the version below)
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.6.32}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" ui/vendor/
cp "$work/package/LICENSE" ui/vendor/uPlot.LICENSE
echo "ui/vendor/: uPlot $version"
