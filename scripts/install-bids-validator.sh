#!/usr/bin/env bash
# Install the official BIDS validator (the npm package bids-validator, an exact 1.x version) into
# PREFIX/node_modules, laid out as `npm install --prefix PREFIX` lays it out, executable at
# PREFIX/node_modules/.bin/bids-validator.
#
#   scripts/install-bids-validator.sh VERSION PREFIX
#
# Only the package's own tarball is unpacked (npm pack): its command line is a single bundled
# file that needs nothing but Node.js, whereas `npm install` would also pull the 900 packages the
# package lists as dependencies (next, jest, lerna...; 700 MB instead of 80 MB). Source maps are
# left out. Without npm or node this says so and succeeds: bids_anomaly then falls back to its
# Python check of the file names. Installing the same version again does nothing.
set -euo pipefail

version=${1:?usage: install-bids-validator.sh VERSION PREFIX}
prefix=${2:?usage: install-bids-validator.sh VERSION PREFIX}
package="$prefix/node_modules/bids-validator"

if [ -f "$package/package.json" ] \
        && grep -q "\"version\": \"$version\"" "$package/package.json"; then
    echo "bids-validator $version is installed in $prefix"
    exit 0
fi
for tool in node npm; do
    if ! command -v "$tool" > /dev/null; then
        echo "install-bids-validator: $tool not found, so the official BIDS validator is not" \
            "installed; bids_anomaly will check file names with its Python fallback" \
            "(install Node.js and npm, e.g. apt-get install nodejs npm, then rerun)" >&2
        exit 0
    fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
npm pack --silent --pack-destination "$scratch" "bids-validator@$version" > /dev/null
rm -rf "$package"
mkdir -p "$package" "$prefix/node_modules/.bin"
tar -xzf "$scratch/bids-validator-$version.tgz" -C "$package" --strip-components=1 \
    --no-same-owner --exclude='*.map'
ln -sf ../bids-validator/bin/bids-validator "$prefix/node_modules/.bin/bids-validator"
echo "installed bids-validator $("$prefix/node_modules/.bin/bids-validator" --version) in $prefix"
