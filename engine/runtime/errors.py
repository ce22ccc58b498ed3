"""The errors every backend raises, apart from the backends so that any module can name them."""


class BackendError(RuntimeError):
    """A backend could not be set up or could not run a batch."""


class BackendUnavailable(BackendError):
    """The backend's runtime or device is not present on this machine (the message says which)."""
