"""Exceptions raised by hyena.

Every error of the library derives from :class:`HyenaError` and from the built-in exception a
Python user would catch for it, so ``except ValueError`` and ``except hyena.HyenaError`` both
work. The message is the one the ``hyena`` command prints after ``error:``.
"""

import builtins


class HyenaError(Exception):
    """Base class of every error raised by hyena."""


class HyenaValueError(HyenaError, builtins.ValueError):
    """Bad input: a malformed file (FASTA, VCF, checkpoint, a pickle that is not plain
    tensors), a shape or config value out of range, a sequence longer than the model takes."""


class HyenaFileNotFoundError(HyenaError, builtins.FileNotFoundError):
    """A model directory, preset or input file that does not exist."""


class HyenaFileExistsError(HyenaError, builtins.FileExistsError):
    """An output that exists already (nothing is overwritten)."""


class HyenaPermissionError(HyenaError, builtins.PermissionError):
    """A file that may not be read or written."""


class HyenaOSError(HyenaError, builtins.OSError):
    """Another I/O error, with the file it concerns."""


class HyenaMemoryError(HyenaError, builtins.MemoryError):
    """The work would not fit in the memory available (refused before allocating)."""


class HyenaRuntimeError(HyenaError, builtins.RuntimeError):
    """Training diverged (a loss or gradient that is not finite)."""


# The native module raises these by the built-in's name.
BY_BUILTIN = {
    "ValueError": HyenaValueError,
    "FileNotFoundError": HyenaFileNotFoundError,
    "FileExistsError": HyenaFileExistsError,
    "PermissionError": HyenaPermissionError,
    "OSError": HyenaOSError,
    "MemoryError": HyenaMemoryError,
    "RuntimeError": HyenaRuntimeError,
}
