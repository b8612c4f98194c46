#!/usr/bin/env bash
# Build .dvc/plots/offline_page.html: the page template for `dvc plots show` with Vega, Vega-Lite and Vega-Embed
# inlined. DVC's default page loads them from a CDN, so offline every Vega plot is blank; this template has no
# {scripts} placeholder, so DVC adds no CDN tags. The versions are the ones dvc-render's page asks for. Libraries:
# BSD-3-Clause, (c) University of Washington Interactive Data Lab. Run from the repo root; needs npm.
set -euo pipefail
out=.dvc/plots/offline_page.html
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null)
for f in "$tmp"/*.tgz; do tar xzf "$f" -C "$tmp" --transform "s|^package|$(basename "$f" .tgz)|"; done
{
  echo '<!DOCTYPE html>'
  echo '<html><head><meta charset="utf-8"><title>DVC plots</title>'
  echo '<!-- vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 inlined by tools/vendor_vega.sh (BSD-3-Clause, University'
  echo '     of Washington Interactive Data Lab): the page works offline. -->'
  for lib in vega-5.20.2/build/vega.min.js vega-lite-5.2.0/build/vega-lite.min.js vega-embed-6.18.2/build/vega-embed.min.js; do
    printf '<script>'; cat "$tmp/$lib"; printf '</script>\n'
  done
  echo '<style>body{font-family:system-ui,sans-serif} table{border-spacing:15px}</style>'
  echo '</head><body>'
  echo '{plot_divs}'
  echo '</body></html>'
} > "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
