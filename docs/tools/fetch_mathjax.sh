#!/usr/bin/env bash
# Copy MathJax 3 (npm package "mathjax", Apache-2.0) into docs/_static/mathjax
# (git-ignored), so that the built pages render their maths offline;
# docs/conf.py uses the copy when it is there, MathJax's CDN otherwise.
# Needs npm and the npm registry. Rebuild the docs afterwards.
set -euo pipefail
version="${MATHJAX_VERSION:-3.2.2}"
dest="$(cd "$(dirname "$0")/.." && pwd)/_static/mathjax"
if [[ -f "$dest/tex-chtml.js" ]]; then
    echo "MathJax already at $dest"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "mathjax@$version" >/dev/null && tar xzf mathjax-*.tgz)
mkdir -p "$dest/output/chtml/fonts"
cp "$tmp/package/es5/tex-chtml.js" "$dest/"
cp -r "$tmp/package/es5/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
cp "$tmp/package/LICENSE" "$dest/"
echo "MathJax $version copied to $dest"
