#!/usr/bin/env bash
# The Debian packages whose real text the offline training sources and the offline evaluation suite read
# (REFERENCE.md §7): WordNet, the Python documentation and three dictionaries for training; the Linux man pages and
# the fortune databases for evaluation only. Needs root (or sudo) and apt; without them the sources that need a
# package are skipped and the chapters say which.
#   sudo bash tools/offline_data.sh
set -euo pipefail
packages=(wordnet-base python3.11-doc dict-gcide dict-foldoc dict-jargon manpages manpages-dev fortunes)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then echo "offline text packages: all installed"; exit 0; fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "offline text packages: installed ${missing[*]}"
