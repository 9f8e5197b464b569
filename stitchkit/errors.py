"""Errors raised by stitchkit. Every message names the file, tensor or argument at fault,
what was found and what was expected."""


class StitchkitError(Exception):
    """Base class of every error stitchkit raises on purpose."""


class SAEFormatError(StitchkitError):
    """An SAE directory or file is missing, unreadable, or does not match the expected layout."""


class ShapeError(StitchkitError, ValueError):
    """A tensor has the wrong shape, or two objects disagree on a dimension."""


class InvalidArgumentError(StitchkitError, ValueError):
    """An argument is outside its allowed range or of the wrong kind."""


class NonFiniteError(StitchkitError, ValueError):
    """A tensor holds NaN or Inf where finite values are required."""


class UnsupportedError(StitchkitError, NotImplementedError):
    """A well-formed input uses a feature stitchkit does not support (yet)."""


class OutputError(StitchkitError):
    """An output path stitchkit may not write: it holds files stitchkit did not write, or
    stitchkit's own output that the caller did not ask to replace."""


class RunMismatchError(InvalidArgumentError):
    """Saved state (a checkpoint, a trained SAE, a stage, a store) belongs to another run."""


class CorruptFileError(InvalidArgumentError):
    """A file stitchkit reads (a manifest, a record, a checkpoint) is unreadable or garbled."""
