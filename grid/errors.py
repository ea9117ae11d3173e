"""The grid's error types, in a module of their own so that every stage can raise them without
importing the runner."""

from __future__ import annotations

import errno

from apgrid.errors import ApgridError


class GridError(ApgridError, RuntimeError):
    """A problem with the user's input or environment: one line, exit code 2."""


class ResumableError(ApgridError, RuntimeError):
    """The grid stopped part-way (disk full, tracking server gone, trials failing every retry);
    finished work is kept and `apgrid resume` continues: one line, exit code 1."""

    exit_code = 1


# Errors of the storage itself, as opposed to bugs: a full disk or quota, a read-only or
# permission-less output folder, a file-size limit.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
