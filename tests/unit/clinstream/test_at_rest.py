"""Start-up says whether the state folder is on an encrypted volume: the mount that holds it,
and whether its device is (or sits on) dm-crypt, read from a mountinfo text and a /sys tree
laid out as the kernel lays them out."""

import logging
from pathlib import Path

from clinstream.at_rest import Volume, dm_crypt_under, state_volume, verdict, volume_of

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 253:1 / /srv/clinical\\040data rw,relatime - ext4 /dev/mapper/vg-state rw
41 27 0:50 / /srv/clinical\\040data/scratch rw,relatime - tmpfs tmpfs rw
42 27 253:2 / /srv/plain rw,relatime - xfs /dev/mapper/vg-plain rw
"""


def _sys_block(tmp_path: Path) -> Path:
    """254:0 a plain disk; 253:0 a dm-crypt mapping; 253:1 LVM over it; 253:2 LVM over 254:0."""
    root = tmp_path / "sys"
    for dev in ("254:0", "253:0", "253:1", "253:2"):
        (root / dev).mkdir(parents=True)
    (root / "253:0" / "dm").mkdir()
    (root / "253:0" / "dm" / "uuid").write_text("CRYPT-LUKS2-4f0c-state\n")
    for dev, under in (("253:1", "253:0"), ("253:2", "254:0")):
        (root / dev / "dm").mkdir()
        (root / dev / "dm" / "uuid").write_text("LVM-abc\n")
        slave = root / dev / "slaves" / "under"
        slave.mkdir(parents=True)
        (slave / "dev").write_text(under + "\n")
    return root


def test_the_longest_mount_point_holding_the_folder_is_its_volume():
    assert volume_of("/srv/clinical data/var", MOUNTINFO) == Volume("/srv/clinical data", "253:1", "ext4")
    assert volume_of("/srv/clinical data/scratch/x", MOUNTINFO) == Volume(
        "/srv/clinical data/scratch", "0:50", "tmpfs"
    )
    assert volume_of("/srv/plainer/var", MOUNTINFO) == Volume("/", "254:0", "ext4")
    assert volume_of("relative", MOUNTINFO) is None


def test_dm_crypt_is_found_on_the_device_or_under_it(tmp_path):
    sys_block = _sys_block(tmp_path)
    assert dm_crypt_under("253:0", sys_block) is True
    assert dm_crypt_under("253:1", sys_block) is True  # LVM on LUKS
    assert dm_crypt_under("253:2", sys_block) is False  # LVM on a plain disk
    assert dm_crypt_under("254:0", sys_block) is False
    assert dm_crypt_under("8:99", sys_block) is None  # not shown here


def test_the_verdict_and_what_a_declaration_changes(tmp_path):
    folder = tmp_path / "srv"
    mountinfo = tmp_path / "mountinfo"
    sys_block = _sys_block(tmp_path)
    here = {"declared": False, "mountinfo": mountinfo, "sys_block": sys_block}
    mountinfo.write_text(f"50 27 253:1 / {folder} rw - ext4 /dev/mapper/vg-state rw\n")
    assert state_volume(folder / "var", **here)[0] == "encrypted"
    mountinfo.write_text(f"50 27 253:2 / {folder} rw - xfs /dev/mapper/vg-plain rw\n")
    assert state_volume(folder / "var", **here) == ("not encrypted", Volume(str(folder), "253:2", "xfs"))
    assert verdict(Volume("/", "0:60", "overlay"), None, declared=False) == "unknown"
    assert verdict(Volume("/", "0:60", "overlay"), None, declared=True) == "encrypted"
    assert state_volume(folder, **(here | {"mountinfo": tmp_path / "absent"}))[0] == "unknown"


def test_start_up_says_which(tmp_path, caplog, monkeypatch):
    from clinstream.settings import Settings
    from clinstream.stack import report_state_volume

    caplog.set_level(logging.INFO, logger="clinstream.stack")
    assert report_state_volume(Settings(var_dir=tmp_path, state_on_encrypted_volume=True)) == "encrypted"
    assert "encrypted volume (declared)" in caplog.text
    caplog.clear()
    plain = ("not encrypted", Volume("/srv", "253:2", "xfs"))
    monkeypatch.setattr("clinstream.stack.state_volume", lambda folder, declared: plain)
    assert report_state_volume(Settings(var_dir=tmp_path)) == "not encrypted"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "NOT on an encrypted volume" in record.getMessage()
    assert "xfs on /srv" in record.getMessage()
