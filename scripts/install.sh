#!/usr/bin/env bash
# Installs everything proxyfda needs on a fresh Debian machine, offline but for the package
# registries. Usage: scripts/install.sh [--test]   (--test adds pytest, playwright, chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
test_deps=0
[ "${1:-}" = "--test" ] && test_deps=1

apt_packages=(dataset-fashion-mnist)
[ "$test_deps" = 1 ] && apt_packages+=(chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

requirements=requirements.txt
[ "$test_deps" = 1 ] && requirements=requirements-test.txt
python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
