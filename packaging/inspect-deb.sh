#!/usr/bin/env bash
# Inspect a built edge-agent .deb: control fields, contents, and the CPU architecture of
# every compiled file inside (ELF shared objects and executables).
#
#   packaging/inspect-deb.sh FILE.deb [--require-litert]
#
# Prints `dpkg-deb -I`, a count of `dpkg-deb -c` entries, then one line per ELF file
# with what `file` says. Exit 1 when any ELF file is not built for the package's
# Architecture (arm64: "ARM aarch64", amd64: "x86-64"), when an arch package holds no
# compiled file at all, or (--require-litert) when ai_edge_litert is missing.
set -euo pipefail
deb="${1:?usage: inspect-deb.sh FILE.deb [--require-litert]}"
litert=0
[ "${2:-}" = "--require-litert" ] && litert=1
for tool in dpkg-deb file; do
    command -v "$tool" >/dev/null || { echo "inspect-deb: $tool not found" >&2; exit 1; }
done

echo "== dpkg-deb -I $(basename "$deb")"
dpkg-deb -I "$deb"
arch="$(dpkg-deb -f "$deb" Architecture)"
listing="$(dpkg-deb -c "$deb")"
echo "== dpkg-deb -c: $(wc -l <<<"$listing") entries; top of /opt/edge-agent/lib:"
awk '{print $NF}' <<<"$listing" | sed -n 's#^\./opt/edge-agent/lib/\([^/]*\)/.*#\1#p' | sort -u | tr '\n' ' '
echo

case "$arch" in
    arm64) want="ARM aarch64" ;;
    amd64) want="x86-64" ;;
    all) want="" ;;
    *) echo "inspect-deb: no expectation for Architecture $arch" >&2; exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work"
elf=0
bad=0
echo "== ELF files (file -b)"
while IFS= read -r -d '' f; do
    desc="$(file -b "$f")"
    case "$desc" in ELF*) ;; *) continue ;; esac
    elf=$((elf + 1))
    rel="${f#"$work"/}"
    if [ -z "$want" ] || [[ "$desc" != *"$want"* ]]; then
        bad=$((bad + 1)); echo "WRONG  $rel: $desc"
    else
        echo "ok     $rel: ${desc%%, BuildID*}"
    fi
done < <(find "$work" -type f -print0 | sort -z)

status=0
echo "== summary: Architecture=$arch, $elf ELF files, $bad not $arch"
[ "$bad" = 0 ] || status=1
if [ "$arch" != all ] && [ "$elf" = 0 ]; then echo "no compiled file in an $arch package"; status=1; fi
if [ "$litert" = 1 ]; then
    if [ -d "$work/opt/edge-agent/lib/ai_edge_litert" ]; then echo "LiteRT: present"
    else echo "LiteRT: MISSING (ai_edge_litert)"; status=1; fi
fi
exit "$status"
