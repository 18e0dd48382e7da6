"""One seam per framework: the backends, and `build`, the door through them."""
from conformance.backends.build import DTYPES, FRAMEWORKS, Built, backend, build  # noqa: F401
