#!/usr/bin/env bash
# Installs what kiln needs on a Debian 12 machine: the Debian packages its builds and tests
# call, and (with --test) the tools its test run uses. Safe to run again: it installs only
# what is missing. Needs root (apt-get).
set -euo pipefail

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages kiln calls at run time, each for:
#   mmdebstrap arch-test   bootstrapping Debian parent images
#   e2fsprogs dosfstools mtools fdisk   file systems and the ESP, built from directories
#   qemu-utils             qemu-img: disk formats (qcow2, vmdk, vhdx, vhd)
#   qemu-system-x86 ovmf   booting images under UEFI (test stage, boot tests)
#   systemd-boot-efi       the UEFI boot loader when the image does not bring its own
packages=(mmdebstrap arch-test e2fsprogs dosfstools mtools fdisk qemu-utils qemu-system-x86 ovmf systemd-boot-efi)
# With --test, also what the tests call: ssh-keyscan (a launched image's forwarded sshd) and
# pgrep (no QEMU left behind).
if [[ "${1:-}" == "--test" ]]; then
  packages+=(openssh-client procps)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  extra=()
  # qemu-utils from bookworm-backports (which some images ship) conflicts with bookworm's
  # qemu-system-x86; installing both from bookworm is the combination that works.
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    missing=("${missing[@]/qemu-utils/}")
    extra=(--allow-downgrades qemu-utils/bookworm)
  fi
  apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[@]} >/dev/null
else
  say "Debian packages: all present"
fi

if [[ "${1:-}" == "--test" ]]; then
  # OpenSCAP and the SCAP Security Guide content: optional for kiln (only SSG profiles in
  # `kiln compliance` and compliance stages need them), required by its OpenSCAP tests.
  scap=(openscap-scanner openscap-utils ssg-debian)
  scap_missing=()
  for p in "${scap[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || scap_missing+=("$p")
  done
  if ((${#scap_missing[@]})); then
    say "installing OpenSCAP for the compliance tests: ${scap_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${scap_missing[@]}" >/dev/null
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest (test runner) with cargo"
    cargo install --locked cargo-nextest
  fi
  # Python tools the tests drive: a real S3-compatible server (moto) for the S3 actions, the
  # official CycloneDX and SPDX validators for the SBOMs, the official Prometheus client's
  # exposition parsers for kiln-api's /metrics, and the AWS CLI and boto3 for the API.
  pip_need=()
  python3 -c 'import moto.server' >/dev/null 2>&1 || pip_need+=('moto[server]')
  python3 -c 'import botocore' >/dev/null 2>&1 || pip_need+=('botocore')
  python3 -c 'import cyclonedx.validation.json' >/dev/null 2>&1 || pip_need+=('cyclonedx-python-lib[json-validation]')
  python3 -c 'import spdx_tools' >/dev/null 2>&1 || pip_need+=('spdx-tools')
  python3 -c 'import prometheus_client' >/dev/null 2>&1 || pip_need+=('prometheus-client')
  # The AWS CLI and boto3 drive `kiln serve` in crates/kiln-cli/tests/serve_awscli.rs.
  command -v aws >/dev/null 2>&1 || pip_need+=('awscli')
  python3 -c 'import boto3' >/dev/null 2>&1 || pip_need+=('boto3')
  if ((${#pip_need[@]})); then
    say "installing Python test tools with pip: ${pip_need[*]}"
    pip3 install --quiet --break-system-packages "${pip_need[@]}" 2>/dev/null \
      || pip3 install --quiet "${pip_need[@]}"
  fi
fi
