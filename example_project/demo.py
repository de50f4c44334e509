"""``make demo [PORT=8000]``: migrate, seed and serve the example shop on embedded defaults.

The query tier lives in one in-memory Redis that this script serves for the demo's lifetime
(``shop_site/demo_cache.py``), so every process of the demo shares it: change a product in
``python manage.py shell`` in another terminal and the next request shows it. With
``SHOP_REDIS_URL`` set, that Redis is used instead. Ctrl-C stops the server and the cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from shop_site import demo_cache  # noqa: E402  (needs HERE on the path)


def port_taken(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def manage(*args: str, env: dict[str, str]) -> int:
    return subprocess.call([sys.executable, "manage.py", *args], cwd=HERE, env=env)  # noqa: S603


def run(host: str, port: int, redis_url: str) -> int:
    env = {**os.environ, "SHOP_REDIS_URL": redis_url}
    for command in (("migrate", "--noinput"), ("seed_shop",)):
        if manage(*command, env=env):
            return 1
    base = f"http://{host}:{port}"
    print(
        f"\n  Shop:   {base}/\n  Admin:  {base}/admin/  (user: admin, password: admin)\n"
        f"  Try:    curl -sI {base}/products/1/  (Cache-Control, Surrogate-Key headers)\n"
        f"  Cache:  {redis_url}, shared with 'cd example_project && ../.venv/bin/python "
        "manage.py shell'\n",
        flush=True,
    )
    server = subprocess.Popen(  # noqa: S603 (our own interpreter and manage.py)
        [sys.executable, "manage.py", "runserver", f"{host}:{port}"], cwd=HERE, env=env
    )
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:  # Ctrl-C reaches the server too; a SIGTERM sent to this script alone does not
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    if port_taken(options.host, options.port):
        print(f"demo: port {options.port} is taken; try: make demo PORT=8123", file=sys.stderr)
        return 1
    if os.environ.get("SHOP_REDIS_URL"):
        return run(options.host, options.port, os.environ["SHOP_REDIS_URL"])
    with demo_cache.serve() as url:
        return run(options.host, options.port, url)


if __name__ == "__main__":
    sys.exit(main())
