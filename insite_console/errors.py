"""Error types: every expected failure is an InsiteError whose message says what and where.

The CLI prints the message (never a traceback) and exits with `exit_code`; the TUI shows it in
a dialog. Anything that is not an InsiteError is a bug and keeps its traceback.
"""


class InsiteError(Exception):
    """An expected failure, reported to the operator as a plain message."""

    exit_code = 1


class ConfigError(InsiteError):
    """The configuration (or a command's arguments) is wrong: exit status 2."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(ConfigError):
    """A command line that cannot be carried out as given."""


class StorageError(InsiteError):
    """A storage backend failed; the message names the storage and the object."""


class ObjectNotFound(StorageError):
    """The object asked for does not exist on the storage."""


class RepositoryError(InsiteError):
    """The repository is missing, locked, of an unknown version, or cannot be unlocked."""


class WrongPassphrase(RepositoryError):
    """No key file of the repository opens with the passphrase given."""


class IntegrityError(InsiteError):
    """Stored data failed authentication or its checksum: tampered, corrupted or truncated."""


class SourceError(InsiteError):
    """Reading a backup source failed (database down, tool exited non-zero, path missing)."""


class RestoreRefused(InsiteError):
    """A restore would overwrite something or write outside its target, and was not allowed."""


class Cancelled(InsiteError):
    """The operator cancelled the operation; nothing half-written was left behind."""


class PolicyBusy(InsiteError):
    """A backup of the policy is already running in another process: one run per policy at a time."""
