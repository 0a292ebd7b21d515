#!/usr/bin/env bash
# Build the edge-agent Debian package with dpkg-deb (no debhelper needed).
#
#   packaging/build-deb.sh [--arch arm64|amd64] [--no-deps] [--extras tflite]
#                          [--wheelhouse DIR] [--glibc 2.35] [--out DIR]
#
# Layout: the agent and its Python dependencies go to /opt/edge-agent/lib (pip
# --target, relocatable, no venv), /usr/bin/edge-agent and edge-ota are small
# launchers running the system python3 with that path; models and device profiles go
# to /usr/share/edge-agent; unit, sysusers and the default config to their places.
#
# Dependencies (docs/install.md):
#   default      pip installs numpy, onnxruntime, paho-mqtt, ... and LiteRT (the
#                `tflite` extra, which every device profile lists) as binary wheels for
#                the TARGET architecture (--arch, default: this machine's) into the
#                package, at the versions pinned in constraints.txt. Any machine can
#                build for any supported architecture: pip picks manylinux wheels for
#                the target (glibc <= --glibc, default 2.35: Debian 12 and Ubuntu 22.04
#                both run them). The target's Python minor version is $PYTHON's (the
#                build interpreter, default python3): the package depends on exactly it.
#                --wheelhouse DIR builds offline from wheels downloaded before.
#   --arch armhf is refused: onnxruntime, LiteRT and numpy publish no 32-bit ARM wheels.
#   --no-deps    only edge-agent's own code (Architecture: all, seconds to build). The
#                Python dependencies must then come from elsewhere (pip); used by CI to
#                check the package layout without downloading wheels.
# packaging/inspect-deb.sh checks a built package (contents, architecture of every
# compiled file).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/dist"
py="${PYTHON:-python3}"  # must match the target's /usr/bin/python3 (minor version)
deps=1
extras="tflite"
wheelhouse=""
arch=""
glibc="2.35"

while [ $# -gt 0 ]; do
    case "$1" in
        --no-deps) deps=0 ;;
        --extras) extras="$2"; shift ;;
        --wheelhouse) wheelhouse="$2"; shift ;;
        --out) out="$2"; shift ;;
        --arch) arch="$2"; shift ;;
        --glibc) glibc="$2"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "build-deb: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found" >&2; exit 1; }
version="$("$py" -c 'import re,sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' "$root/edge_agent/__init__.py")"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if [ "$deps" = 0 ]; then
    arch="all"
else
    [ -n "$arch" ] || arch="$(dpkg --print-architecture)"
    case "$arch" in
        arm64) machine=aarch64 ;;
        amd64) machine=x86_64 ;;
        armhf|armel)
            echo "build-deb: --arch $arch is not supported: onnxruntime, ai-edge-litert and numpy" \
                "publish no 32-bit ARM wheels (use a 64-bit OS on the Pi; docs/install.md)" >&2
            exit 2 ;;
        *) echo "build-deb: unknown --arch $arch (arm64 or amd64)" >&2; exit 2 ;;
    esac
    [[ "$glibc" =~ ^2\.[0-9]+$ ]] || { echo "build-deb: --glibc wants 2.N, got $glibc" >&2; exit 2; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/edge-agent_${version}_${arch}"
lib="$stage/opt/edge-agent/lib"
mkdir -p "$lib" "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
    "$stage/usr/lib/sysusers.d" "$stage/etc/edge-agent" "$stage/usr/share/edge-agent" \
    "$stage/usr/share/doc/edge-agent"

# Our code: the two packages, without caches.
tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' -cf - edge_agent ota | tar -C "$lib" -xf -
for d in models device_profiles; do
    [ -d "$root/$d" ] && cp -r "$root/$d" "$stage/usr/share/edge-agent/$d"
done

if [ "$deps" = 1 ]; then
    reqs="$("$py" - "$root/pyproject.toml" "$extras" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(p["dependencies"])
for e in filter(None, sys.argv[2].split(",")):
    reqs += p["optional-dependencies"][e]
print("\n".join(reqs))
PY
)"
    pyabi="cp${pyver/./}"
    pipargs=(--target "$lib" --only-binary=:all: --no-compile --disable-pip-version-check -q
        -c "$root/constraints.txt" --implementation cp --python-version "$pyver"
        --abi "$pyabi" --abi abi3 --abi none)
    # pip does not widen a manylinux tag to older ones by itself: list every glibc
    # from manylinux2014's 2.17 up to the target's.
    for minor in $(seq 17 "${glibc#2.}"); do pipargs+=(--platform "manylinux_2_${minor}_${machine}"); done
    pipargs+=(--platform "manylinux2014_${machine}")
    [ -n "$wheelhouse" ] && pipargs+=(--no-index --find-links "$wheelhouse")
    # shellcheck disable=SC2086
    printf '%s\n' "$reqs" > "$work/requirements.txt"
    "$py" -m pip install "${pipargs[@]}" -r "$work/requirements.txt"
    rm -rf "$lib/bin"  # console scripts of dependencies point at the build machine
    next="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')"
    depends="python3 (>= $pyver), python3 (<< $next)"
else
    depends="python3 (>= 3.10)"
fi

for cmd in edge-agent:edge_agent edge-ota:ota; do
    name="${cmd%%:*}"; mod="${cmd##*:}"
    cat > "$stage/usr/bin/$name" <<EOF
#!/bin/sh
# $name launcher: the code and its Python dependencies live in /opt/edge-agent/lib.
PYTHONPATH="/opt/edge-agent/lib\${PYTHONPATH:+:\$PYTHONPATH}" exec /usr/bin/python3 -s -m $mod "\$@"
EOF
    chmod 755 "$stage/usr/bin/$name"
done

install -m 644 "$here/edge-agent.service" "$stage/usr/lib/systemd/system/edge-agent.service"
install -m 644 "$here/edge-agent.sysusers" "$stage/usr/lib/sysusers.d/edge-agent.conf"
install -m 644 "$here/agent.toml" "$stage/etc/edge-agent/agent.toml"
for doc in install.md status.md configuration.md homeassistant.md; do
    [ -f "$root/docs/$doc" ] && install -m 644 "$root/docs/$doc" "$stage/usr/share/doc/edge-agent/$doc"
done
install -m 755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$stage/DEBIAN/"
echo "/etc/edge-agent/agent.toml" > "$stage/DEBIAN/conffiles"

size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<EOF
Package: edge-agent
Version: $version
Architecture: $arch
Maintainer: edge-agent maintainers <edge-agent@localhost>
Section: misc
Priority: optional
Installed-Size: $size
Depends: $depends, adduser | systemd (>= 245)
Recommends: systemd
Description: anomaly detection agent for factory gateways
 Runs quantized anomaly-detection models (ONNX Runtime, LiteRT) on local sensor
 streams, reports over MQTT and accepts signed over-the-air model updates with
 A/B model slots. Runs as the systemd service edge-agent.service; check it with
 "edge-agent status".
EOF
if [ "$deps" = 0 ]; then
    echo " ." >> "$stage/DEBIAN/control"
    echo " Built with --no-deps: Python dependencies are not included." >> "$stage/DEBIAN/control"
fi

mkdir -p "$out"
deb="$out/edge-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
