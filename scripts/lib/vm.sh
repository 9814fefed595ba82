# shellcheck shell=bash disable=SC2154 # vm_script, vm_what and vm_module are set by the caller
# The VM machinery shared by scripts/usb-vm-tests and scripts/powercut-tests.
# Sourced (not run) from the repository root, after the caller has set:
#   vm_script   its name for messages, e.g. scripts/usb-vm-tests
#   vm_what     what it runs, e.g. "the USB scanner bench" (skip messages say "SKIPPED <vm_what>")
#   vm_module   a kernel module the VM needs: the newest /boot/vmlinuz-* that has it is used
#   vm_apt      (optional) more Debian packages to install when missing, as "command:package" pairs
# and then calls vm_prepare, which sets $kernel and $kvm (the vng KVM flags) or exits 77 (skip).

skip() {
  echo "$vm_script: SKIPPED $vm_what: $*" >&2
  exit 77
}

# The newest kernel in /boot whose modules include $vm_module.
find_kernel() {
  local v
  for img in $(ls -1v /boot/vmlinuz-* 2>/dev/null | tac); do
    v=${img#/boot/vmlinuz-}
    if ls /lib/modules/"$v"/kernel/"$vm_module".ko* >/dev/null 2>&1; then
      echo "$img"
      return 0
    fi
  done
  return 1
}

# Installs what is missing (Debian qemu-system-x86, busybox-static and linux-image-amd64,
# with sudo when not root; virtme-ng from PyPI into .venv-vm, a host tool kept out of the
# project's .venv so the agent's own install stays what a kiosk gets), then `scripts/dev setup`.
vm_prepare() {
  [ "$(uname -s)" = Linux ] || skip "needs Linux"
  [ "$(uname -m)" = x86_64 ] || skip "boots an x86-64 kernel under qemu; this machine is $(uname -m)"

  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"

  local apt_missing=() pair
  command -v qemu-system-x86_64 >/dev/null || apt_missing+=(qemu-system-x86)
  [ -x /bin/busybox ] || apt_missing+=(busybox-static)
  find_kernel >/dev/null || apt_missing+=(linux-image-amd64)
  for pair in ${vm_apt:-}; do
    PATH=$PATH:/usr/sbin:/sbin command -v "${pair%%:*}" >/dev/null || apt_missing+=("${pair#*:}")
  done
  if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "$vm_script: installing Debian packages: ${apt_missing[*]}" >&2
    { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${apt_missing[@]}"; } >&2 ||
      skip "could not install ${apt_missing[*]}"
  fi
  kernel=$(find_kernel) || skip "no kernel in /boot with the ${vm_module##*/} module"
  [ -r "$kernel" ] || skip "$kernel is not readable (run as root)"

  if [ ! -x .venv-vm/bin/vng ]; then
    echo "$vm_script: installing virtme-ng into .venv-vm" >&2
    { python3 -m venv .venv-vm && .venv-vm/bin/python -m pip install -q 'virtme-ng>=1.30,<2'; } >&2 ||
      skip "could not install virtme-ng"
  fi
  scripts/dev setup
}
