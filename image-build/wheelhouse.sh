#!/usr/bin/env bash
# Build the wheelhouse the image's virtual environment is installed from.
#
#   wheelhouse.sh ARCH DEST
#
# Runs on the build host and never inside the target: the target has no
# compiler and, for arm64, runs under emulation.  The dependencies pinned in
# pyproject.toml are resolved once with `pip wheel` on the host (which also
# turns any sdist-only package into a wheel); pure-Python wheels serve every
# architecture, and each compiled one is fetched again as a manylinux wheel
# for the target with `pip download --platform ... --only-binary=:all:`.
# DEST is reused as long as the dependency list does not change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=image-build/config.sh
. "$here/config.sh"

arch=${1:?usage: wheelhouse.sh ARCH DEST}
dest=${2:?usage: wheelhouse.sh ARCH DEST}
pip=${PIP:-$repo/.venv/bin/pip}

case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "wheelhouse: unsupported architecture $arch" >&2; exit 2 ;;
esac

requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$repo/.venv/bin/python" - "$repo/pyproject.toml" >"$requirements" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY

key=$( (cat "$requirements"; echo "$arch $PYTHON_VERSION $GLIBC_VERSION") | sha256sum | cut -c1-16)
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$key" ]; then
  echo "wheelhouse: $dest is up to date"
  exit 0
fi
rm -rf "$dest"
mkdir -p "$dest/resolved"

# 1. Resolve every dependency, transitively, into wheels for the host.
"$pip" wheel -q --wheel-dir "$dest/resolved" -r "$requirements"

# 2. Keep the pure wheels; fetch each compiled one for the target.
pyver=${PYTHON_VERSION/./}
platforms=(--platform "manylinux2014_$machine")
for minor in $(seq 17 "${GLIBC_VERSION#2.}"); do
  platforms+=(--platform "manylinux_2_${minor}_$machine")
done
for wheel in "$dest"/resolved/*.whl; do
  file=$(basename "$wheel")
  if [[ "$file" == *-none-any.whl ]]; then
    mv "$wheel" "$dest/"
    continue
  fi
  # name-version-... ; wheel file names escape '-' inside the name as '_'.
  name=${file%%-*}
  rest=${file#*-}
  version=${rest%%-*}
  "$pip" download -q --no-deps --only-binary=:all: --dest "$dest" \
    "${platforms[@]}" --implementation cp --python-version "$pyver" \
    --abi "cp$pyver" --abi abi3 --abi none "$name==$version"
done
rm -rf "$dest/resolved"
echo "$key" >"$dest/.complete"
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels for $arch in $dest"
