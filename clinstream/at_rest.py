"""Is the state folder (`CLINSTREAM_VAR_DIR`: the SQLite state and chart replicas, Milvus Lite,
the embedded broker's log; PHI all of them) on an encrypted volume? Said once at start-up.

clinstream does not encrypt these files itself: they belong on an encrypted volume (LUKS /
dm-crypt, or the cloud provider's encrypted disks). On Linux the answer is read from the
kernel: the volume holding the folder (/proc/self/mountinfo, longest mount point) and, for a
device-mapper device, whether it or a device under it is a dm-crypt target
(/sys/dev/block/MAJ:MIN/dm/uuid starts with ``CRYPT-``). A volume the kernel cannot tell about
from here (a network or overlay file system, a cloud disk encrypted below the virtual machine)
can be declared with ``CLINSTREAM_STATE_ON_ENCRYPTED_VOLUME=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Verdict = Literal["encrypted", "not encrypted", "unknown"]
NO_DEVICE_FS = frozenset({"overlay", "tmpfs", "nfs", "nfs4", "cifs", "smb3", "fuse", "9p", "virtiofs", "zfs"})


@dataclass(frozen=True)
class Volume:
    """The mount holding a path: its mount point, device (``major:minor``) and file system."""

    mount_point: str
    device: str
    fs_type: str


def _unescape(field: str) -> str:
    """mountinfo escapes spaces, tabs, newlines and backslashes as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def volume_of(path: str, mountinfo: str) -> Volume | None:
    """The mount of ``path`` (absolute, resolved) among /proc/self/mountinfo's lines: the
    longest mount point that contains it (the last mounted wins a tie)."""
    best: Volume | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = Volume(point, fields[2], fs_type)
    return best


def dm_crypt_under(device: str, sys_block: Path, depth: int = 0) -> bool | None:
    """Whether block device ``major:minor`` is, or sits on, a dm-crypt target (None: the
    kernel does not show it here)."""
    node = sys_block / device
    if not node.exists() or depth > 8:
        return None
    uuid = node / "dm" / "uuid"
    if uuid.is_file() and uuid.read_text().startswith("CRYPT-"):
        return True
    slaves = node / "slaves"
    if slaves.is_dir():
        for slave in slaves.iterdir():
            dev = (slave / "dev").read_text().strip() if (slave / "dev").is_file() else ""
            if dev and dm_crypt_under(dev, sys_block, depth + 1):
                return True
    return False  # a disk or partition mounted as it is, or a mapping over no dm-crypt


def verdict(volume: Volume | None, crypt: bool | None, *, declared: bool) -> Verdict:
    """What start-up says: a declaration wins; a device-less file system is unknown."""
    if declared:
        return "encrypted"
    if volume is None or volume.fs_type in NO_DEVICE_FS or crypt is None:
        return "unknown"
    return "encrypted" if crypt else "not encrypted"


def state_volume(
    folder: Path,
    *,
    declared: bool,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    sys_block: Path = Path("/sys/dev/block"),
) -> tuple[Verdict, Volume | None]:
    """The verdict for ``folder`` on this host (reads /proc and /sys; never raises)."""
    try:
        volume = volume_of(str(folder.resolve()), mountinfo.read_text())
        crypt = dm_crypt_under(volume.device, sys_block) if volume is not None else None
    except OSError:
        volume, crypt = None, None
    return verdict(volume, crypt, declared=declared), volume
