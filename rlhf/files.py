"""Model files get the permissions of any other file the process writes.

safetensors 0.8 writes through a temporary file that is always created with mode 0600 and then
renamed into place, so ``model.safetensors`` ends up readable by its owner only, whatever the
umask (safetensors/safetensors#782; the fix, #789, is not released). A model directory shared
with a generation worker running as another user, or copied into a container, is then
unreadable. :func:`normalize_permissions` gives such files the mode a plain ``open()`` would
have given them: ``0o666`` masked by the umask (0644 under the usual 022).
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` masked by the umask."""
    return 0o666 & ~current_umask()


def normalize_permissions(folder: str | os.PathLike) -> None:
    """Give every ``.safetensors`` file under ``folder`` the default mode of a new file."""
    mode = default_file_mode()
    for path in Path(folder).rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
