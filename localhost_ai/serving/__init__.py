"""Use cases of the server (generate images, list and install models), testable without HTTP."""
