#!/usr/bin/env bash
# Make Apple's offline Metal compiler (`metal`, `metallib`) usable on a macOS CI runner, or fail.
#
# From Xcode 26 on the Metal toolchain is a separate component that runner images may lack (or lose): without it the
# build would quietly embed the kernel source instead of compiling fa_kernels.metallib. So: use it if it runs,
# otherwise download it (`xcodebuild -downloadComponent MetalToolchain`), and if xcrun still does not select the
# downloaded toolchain, name it through TOOLCHAINS (exported to later steps via $GITHUB_ENV). Used by
# .github/workflows/macos.yml and wheels.yml; both then build with -Dmetallib=enabled.
set -euo pipefail

sw_vers || true
uname -m
xcodebuild -version

if ! xcrun -sdk macosx metal --version; then
    echo "Metal toolchain not usable: xcodebuild -downloadComponent MetalToolchain"
    xcodebuild -downloadComponent MetalToolchain
fi
if ! xcrun -sdk macosx metal --version; then
    id=$(xcodebuild -showComponent MetalToolchain -json | python3 -c '
import json, re, sys
ids = re.findall(r"com\.apple\.dt\.toolchain\.Metal\.[0-9.]+", json.dumps(json.load(sys.stdin)))
print(ids[0] if ids else "")')
    if [ -z "$id" ]; then
        echo "::error::the Metal toolchain is missing and xcodebuild names no downloaded one"
        exit 1
    fi
    export TOOLCHAINS="$id"
    xcrun -sdk macosx metal --version
    if [ -n "${GITHUB_ENV:-}" ]; then echo "TOOLCHAINS=$id" >> "$GITHUB_ENV"; fi
fi
xcrun -sdk macosx -f metallib
