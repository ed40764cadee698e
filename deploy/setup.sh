#!/usr/bin/env bash
# Installs what the node, the demo and the tests need on Debian 12 (as root), idempotently:
# Orthanc + DICOMweb plugin, dcmtk, dicom3tools, Chromium (apt); the FHIR engine and Node 22, the OHIF viewer bundle (npm pack);
# the venv .venv (pip).
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the browser the viewer tests drive through Playwright (Playwright's own browser download is not used).
apt_packages="orthanc orthanc-dicomweb dcmtk dicom3tools chromium"
missing=""
for p in $apt_packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# npm ci only when the lock file changed since the last install (stamp kept inside node_modules).
stamp=deploy/fhir/node_modules/.installed-from-lock
if ! cmp -s deploy/fhir/package-lock.json "$stamp"; then
  echo "setup: npm ci (Medplum FHIR engine 5.2.13, Node 22)"
  npm ci --prefix deploy/fhir --no-audit --no-fund --loglevel=error
  cp deploy/fhir/package-lock.json "$stamp"
fi
# OHIF Viewer 3's prebuilt bundle (dist/ of the pinned @ohif/app tarball), for the demo and tests/viewer.
stamp=deploy/viewer/dist/.installed-from-pin
if ! cmp -s deploy/viewer/ohif.pin "$stamp"; then
  package=$(sed -n 's/^package=//p' deploy/viewer/ohif.pin)
  integrity=$(sed -n 's/^integrity=//p' deploy/viewer/ohif.pin)
  echo "setup: npm pack $package (OHIF Viewer bundle)"
  work=$(mktemp -d)
  tarball=$(cd "$work" && npm pack "$package" --silent --loglevel=error)
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    echo "setup: $package does not match deploy/viewer/ohif.pin (got $actual)" >&2
    rm -rf "$work"; exit 1
  fi
  rm -rf deploy/viewer/dist
  tar -xzf "$work/$tarball" -C "$work" package/dist
  mv "$work/package/dist" deploy/viewer/dist
  rm -rf "$work"
  cp deploy/viewer/ohif.pin "$stamp"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: python3 -m venv .venv"
  python3 -m venv .venv
fi
# This machine's pip config lists package folders that may be absent; pip warns once per package about them.
pip_install() {
  .venv/bin/pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# torch and torchvision first, pinned: pip takes them from this machine's disk and never picks another torch.
pip_install torch==2.14.1 torchvision==0.29.1
pip_install -e ".[test]"
echo "setup: done"
