"""gunicorn settings for a bridged Flask app: `gunicorn -c examples/gunicorn.conf.py`.

From the repository root this serves the factory example (`wsgi_app` below); name another app
on the command line to serve it with the same settings, for example
`gunicorn -c examples/gunicorn.conf.py 'examples.flask_login_app:create_app()'`.

There is deliberately no server hook here. The bridge already does what hooks are usually
written for, and doing it twice would only slow the shutdown:

- `post_fork`: nothing to do. The bridge resets its own state in every forked child (one
  `os.register_at_fork` hook in bridge/forking.py): fresh locks, empty queues, no inherited
  threads, the parent's queued lines left to the parent. Its threads start again lazily in the
  worker. This holds with `preload_app` on or off, and for workers recycled by `max_requests`.
- `worker_exit` / `on_exit`: nothing to do. Every way a worker ends under gunicorn (SIGTERM:
  the end of its loop; SIGINT/SIGQUIT; SIGABRT after `timeout`; `max_requests`) leaves through
  `sys.exit()`, so the interpreter's exit handlers run, and the bridge registers one (at import
  of bridge.extension) that flushes and closes every app's sinks within `shutdown_timeout`
  (5 s by default). A `bridge.close()` in `worker_exit` would run the same flush one step
  earlier. Only SIGKILL loses what a worker still had queued: see `graceful_timeout`.
"""

# Serve the factory example unless the command line names an app. The repository root (the
# working directory) is on sys.path, as gunicorn puts its `chdir` there.
wsgi_app = "examples.factory_app:create_app()"

# Local only; behind a reverse proxy, bind where the proxy reaches it. `--bind` on the
# command line wins over this.
bind = "127.0.0.1:8000"

# Two sync workers: each has its own bridge pipeline (sinks, counters, threads). File sinks
# are safe to share between workers: each line is one O_APPEND write.
workers = 2
worker_class = "sync"

# A worker's request may take up to `timeout` seconds before gunicorn aborts it.
timeout = 30

# After SIGTERM, gunicorn waits this long for each worker to finish its request and exit
# before it sends SIGKILL. A worker's exit includes the bridge's final flush (up to its
# `shutdown_timeout`, 5 s by default): keep this comfortably above that, plus your slowest
# request, or the lines still queued in a slow sink die with the worker.
graceful_timeout = 30

# preload_app: off (gunicorn's default). Each worker imports the app itself, so each worker
# reads the bridge configuration and opens its sinks after the fork. Turning it on (loading
# the app once in the master, then forking) saves memory and startup time with large apps and
# is safe with the bridge: the master's sinks are reset in every child (see above), and the
# master itself writes nothing unless the app emits events at import. What changes with
# preload: a change of code or of bridge configuration needs a full restart (the workers a
# SIGHUP starts are forked from the app the master already loaded), and a configuration error
# is reported once, by the master, rather than by a worker.
preload_app = False

# Recycling workers (e.g. max_requests = 1000, max_requests_jitter = 100) is safe: a recycled
# worker flushes its events at exit like any other, and its replacement starts afresh.

# Access logging: the bridge's `request.finished` event already records each request (method,
# route, status, duration, request id) as JSON. Keep gunicorn's access log off (its default)
# unless you need its format too. Its error log (stderr) is where the bridge reports its own
# delivery problems, at most once a minute per kind.
accesslog = None
