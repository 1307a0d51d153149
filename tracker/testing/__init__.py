"""A test kit shipped with tracker, for its own tests, its benchmarks, `tracker demo`, and anyone testing code that
uses tracker: `fake_upstream` (a fake BitScale Grid API on 127.0.0.1, standard library only), `env` (the
environment for a child process that must import this same tracker), `http_server` (`tracker serve --http` in a
child process on 127.0.0.1), `postgres` (a throwaway PostgreSQL server made with initdb and pg_ctl) and `client`
(an MCP client over an in-process server, a stdio subprocess or Streamable HTTP). Nothing here is imported by the
library."""
