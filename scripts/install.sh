#!/usr/bin/env bash
# Install scan-agent on Raspberry Pi OS Bookworm (64- or 32-bit) as a systemd service.
# On plain Debian 12 it installs too, without camera and GPIO (Raspberry Pi OS packages).
#
#   sudo scripts/install.sh                 install or update (idempotent)
#   sudo scripts/install.sh --uninstall     remove program, unit, udev rules and modules-load entry;
#                                           keep the ledger, the config and the device key
#   scripts/install.sh --root DIR [...]     the same, into DIR instead of /
#
# --root writes exactly the files a real install writes, under DIR, and skips
# what changes the running system: apt-get, useradd/usermod, pip install,
# modprobe, systemctl and udevadm. Enabling the unit becomes the symlink systemctl would
# make. Owners that need the scan-agent user are applied when that user exists
# and are always recorded in DIR/opt/scan-agent/install-manifest
# ("mode owner:group path" per line), which a real install writes too.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(realpath -m "${2:?--root needs a directory}"); shift 2 ;;
    --root=*) ROOT=$(realpath -m "${1#--root=}"); shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

USER_NAME=scan-agent
GROUPS_WANTED="input dialout gpio video"
OPT=/opt/scan-agent
ETC=/etc/scan-agent
STATE=/var/lib/scan-agent
UNIT=/etc/systemd/system/scan-agent.service
WANTS=/etc/systemd/system/multi-user.target.wants/scan-agent.service
RULES=/etc/udev/rules.d/99-scan-agent.rules
# The keyboard wedge's uinput module, loaded at every boot by systemd-modules-load.
MODULES_LOAD=/etc/modules-load.d/scan-agent.conf
MANIFEST=$OPT/install-manifest
# gcc and the headers build evdev. cryptography comes from apt (38 on Bookworm),
# with the cffi it needs: PyPI has no armv7l cffi wheel, and the venv sees both.
APT_PACKAGES="python3 python3-venv python3-dev gcc libc6-dev python3-cryptography python3-cffi sqlite3"
# Only Raspberry Pi OS has these: without them there is no camera or GPIO feedback.
APT_PI_ONLY="python3-picamera2 python3-lgpio"
# A camera kiosk's numpy and pillow: apt's, as picamera2 uses (and PyPI has no armv7l wheels).
APT_CAMERA="python3-numpy python3-pil"
APT_OPTIONAL="mosquitto-clients"

live() { [ -z "$ROOT" ]; }   # true when installing onto the running system
say() { echo "install.sh: $*"; }
user_exists() { live && getent passwd "$USER_NAME" >/dev/null; }
installed() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
available() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'; }

# place MODE OWNER:GROUP PATH: set mode, set owner where possible, record both.
place() {
  local mode=$1 owner=$2 path=$3
  chmod "$mode" "$ROOT$path"
  local user=${owner%%:*} group=${owner##*:}
  if [ "$(id -u)" -eq 0 ] && getent passwd "$user" >/dev/null && getent group "$group" >/dev/null; then
    chown "$owner" "$ROOT$path"
  fi
  # One line per path: replace any earlier record of it.
  local m=$ROOT$MANIFEST
  touch "$m"
  grep -v " $path\$" "$m" >"$m.new" || true
  echo "$mode $owner $path" >>"$m.new"
  sort -k3 "$m.new" >"$m" && rm -f "$m.new"
}

# install_file SRC MODE OWNER DEST: copy only when the content differs.
install_file() {
  local src=$1 mode=$2 owner=$3 dest=$4
  mkdir -p "$(dirname "$ROOT$dest")"
  if ! cmp -s "$src" "$ROOT$dest"; then cp "$src" "$ROOT$dest"; fi
  place "$mode" "$owner" "$dest"
}

make_dir() {
  mkdir -p "$ROOT$3"
  place "$1" "$2" "$3"
}

do_install() {
  if live; then
    [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo), or use --root DIR" >&2; exit 1; }
    say "apt: $APT_PACKAGES"
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $APT_PACKAGES
    local p pi=() absent=()
    for p in $APT_PI_ONLY; do
      if available "$p"; then pi+=("$p"); else absent+=("$p"); fi
    done
    [ ${#pi[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pi[@]}"
    [ ${#absent[@]} -eq 0 ] || say "not installed: ${absent[*]} (Raspberry Pi OS only; camera/GPIO unavailable)"
    if installed python3-picamera2; then
      # shellcheck disable=SC2086
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q $APT_CAMERA
      if [ "$(dpkg --print-architecture)" = armhf ]; then
        # No armv7l zxing-cpp wheel on PyPI, and Debian's python3-zxing-cpp (1.4) is older
        # than the 3.0 the camera needs: pip builds it, which takes cmake and g++.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++
        say "armhf camera kiosk: pip builds zxing-cpp from source (cmake, g++); on a Pi that takes a while"
      fi
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $APT_OPTIONAL || say "optional $APT_OPTIONAL not installed"
    if ! getent passwd "$USER_NAME" >/dev/null; then
      useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
    fi
    for g in $GROUPS_WANTED; do
      getent group "$g" >/dev/null || groupadd --system "$g"
      usermod -a -G "$g" "$USER_NAME"
    done
  else
    say "--root $ROOT: skipping apt-get, useradd, pip, systemctl, udevadm"
  fi

  make_dir 0755 root:root "$OPT"
  make_dir 0750 "root:$USER_NAME" "$ETC"
  make_dir 0750 "$USER_NAME:$USER_NAME" "$STATE"

  # The venv sees apt's python3-cryptography (and, on a Pi, python3-picamera2 and
  # python3-lgpio): pip takes those instead of downloading or building its own.
  if [ ! -x "$ROOT$OPT/venv/bin/python" ]; then
    if live; then
      python3 -m venv --system-site-packages "$OPT/venv"
    else
      python3 -m venv --system-site-packages --without-pip "$ROOT$OPT/venv"
    fi
  fi
  if live; then
    # The local API's extra (starlette, uvicorn: pure Python, imported only with [api] on)
    # everywhere, so a counter can turn it on in agent.toml alone; the camera extra
    # (zxing-cpp, numpy, pillow) only where there is a camera stack.
    local spec="${SRC}[api]"
    if installed python3-picamera2; then spec="${SRC}[api,camera]"; fi
    "$OPT/venv/bin/python" -m pip install -q --upgrade "$spec"
  fi
  install_file "$SRC/hardware.md" 0644 root:root "$OPT/hardware.md"
  # Scanner profiles (host-ACK bytes, setup codes) and the sheet printer.
  make_dir 0755 root:root "$OPT/firmware_config"
  for profile in "$SRC"/firmware_config/*.toml; do
    install_file "$profile" 0644 root:root "$OPT/firmware_config/$(basename "$profile")"
  done
  install_file "$SRC/scripts/config-sheet" 0755 root:root "$OPT/config-sheet"

  # The config is the technician's: write the template once, never overwrite.
  if [ ! -e "$ROOT$ETC/agent.toml" ]; then
    cp "$SRC/systemd/agent.toml.template" "$ROOT$ETC/agent.toml"
  fi
  place 0640 "root:$USER_NAME" "$ETC/agent.toml"

  install_file "$SRC/systemd/scan-agent.service" 0644 root:root "$UNIT"
  install_file "$SRC/systemd/99-scan-agent.rules" 0644 root:root "$RULES"
  install_file "$SRC/systemd/modules-load.conf" 0644 root:root "$MODULES_LOAD"

  if live; then
    systemctl daemon-reload
    systemctl enable scan-agent.service
    # Now as well as at boot; a kernel with uinput built in has no module to load.
    modprobe uinput 2>/dev/null || [ -e /dev/uinput ] || say "could not load uinput: the keyboard wedge will not start"
    udevadm control --reload-rules
    udevadm trigger --subsystem-match=input --subsystem-match=tty
    # /dev/uinput to group scan-agent (the rule also applies at every boot through static_node).
    udevadm trigger --subsystem-match=misc --sysname-match=uinput
    say "installed; edit $ETC/agent.toml (or run scan-agent provision), then: systemctl restart scan-agent"
  else
    mkdir -p "$(dirname "$ROOT$WANTS")"
    ln -sfn "$UNIT" "$ROOT$WANTS"
    say "installed into $ROOT"
  fi
}

do_uninstall() {
  if live; then
    [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo), or use --root DIR" >&2; exit 1; }
    systemctl disable --now scan-agent.service 2>/dev/null || true
  fi
  rm -f "$ROOT$WANTS" "$ROOT$UNIT" "$ROOT$RULES" "$ROOT$MODULES_LOAD"
  rm -rf -- "$ROOT$OPT"   # OPT is a fixed path, never empty
  if live; then
    systemctl daemon-reload
    udevadm control --reload-rules
  fi
  say "removed program, unit, udev rules and the uinput modules-load entry; kept the ledger ($STATE), the config and device key ($ETC) and the $USER_NAME user"
}

if [ "$UNINSTALL" -eq 1 ]; then do_uninstall; else do_install; fi
