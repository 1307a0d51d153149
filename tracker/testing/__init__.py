"""A test kit shipped with tracker, for its own tests, its benchmarks, `tracker demo`, and anyone testing code that
uses tracker: `fake_upstream` (a fake BitScale Grid API on 127.0.0.1, standard library only) and `env` (the
environment for a child process that must import this same tracker). Nothing here is imported by the library."""
