#!/usr/bin/env bash
# The example shop on real services: PostgreSQL, Redis, RabbitMQ, a Celery worker, and Varnish on
# :6081 running docs/varnish.vcl in front of Django (on :8000).
#
#   make demo-services                                   # or: bash example_project/run_with_services.sh
#   bash example_project/run_with_services.sh --smoke    # start, prove a purge reaches Varnish, stop
#
# Needs (Debian/Ubuntu): apt-get install postgresql redis-server rabbitmq-server varnish \
# varnish-modules, with the three servers running, and the virtualenv of `make venv`.
# Existing services are only used, never started, stopped or reconfigured: the shop gets its own
# database (created if missing), its own Redis database number and its own Celery queue. Override
# any of the variables below; see example_project/shop_site/settings.py for what each one does.
# Ctrl-C stops what this script started (Django, the worker, Varnish) and nothing else.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-$REPO/.venv/bin/python}"

export SHOP_DATABASE_URL="${SHOP_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/tiercache_shop}"
export SHOP_REDIS_URL="${SHOP_REDIS_URL:-redis://127.0.0.1:6379/12}"
export SHOP_CELERY_BROKER_URL="${SHOP_CELERY_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}"
export SHOP_CELERY_QUEUE="${SHOP_CELERY_QUEUE:-tiercache-shop}"
SHOP_PORT="${SHOP_PORT:-8000}"
VARNISH_PORT="${VARNISH_PORT:-6081}"
export SHOP_VARNISH_URLS="http://127.0.0.1:${VARNISH_PORT}/"
export SHOP_VARNISH_TOKEN="${SHOP_VARNISH_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}"
export SHOP_DEBUG="${SHOP_DEBUG:-1}"
export DJANGO_SETTINGS_MODULE=shop_site.settings
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

die() { echo "run_with_services: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no virtualenv python at $PY: run 'make venv' first (or set PYTHON)"
VARNISHD="$(command -v varnishd || true)"
[ -n "$VARNISHD" ] || { [ -x /usr/sbin/varnishd ] && VARNISHD=/usr/sbin/varnishd; } \
    || die "varnishd not found: apt-get install varnish varnish-modules"
VMOD_DIR=""
for dir in /usr/lib/*/varnish/vmods /usr/lib/varnish/vmods /usr/lib64/varnish/vmods \
    /usr/local/lib/varnish/vmods; do
    if [ -e "$dir/libvmod_xkey.so" ]; then VMOD_DIR="$dir"; break; fi
done
[ -n "$VMOD_DIR" ] || die "libvmod_xkey.so not found: apt-get install varnish-modules"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free "$SHOP_PORT" || die "port $SHOP_PORT is taken: set SHOP_PORT"
port_free "$VARNISH_PORT" || die "port $VARNISH_PORT is taken: set VARNISH_PORT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tiercache-shop.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # wait_for URL NAME LOG
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.2
    done
    tail -n 40 "$3" >&2
    die "$2 did not answer at $1"
}

cd "$HERE"
echo "== database: ${SHOP_DATABASE_URL%%@*}@… (created if missing), migrate, seed"
"$PY" - <<'EOF'
import os
from urllib.parse import unquote, urlsplit

url = urlsplit(os.environ["SHOP_DATABASE_URL"])
if url.scheme in ("postgres", "postgresql"):
    import psycopg
    from psycopg import sql

    name = unquote(url.path.lstrip("/"))
    with psycopg.connect(
        host=url.hostname, port=url.port or 5432, user=unquote(url.username or ""),
        password=unquote(url.password or "") or None, dbname="postgres", autocommit=True,
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")
EOF
"$PY" manage.py migrate --noinput >/dev/null
"$PY" manage.py seed_shop
"$PY" manage.py check --fail-level WARNING >/dev/null

echo "== Django on 127.0.0.1:$SHOP_PORT, Celery worker (queue $SHOP_CELERY_QUEUE), Varnish on :$VARNISH_PORT"
"$PY" manage.py runserver --noreload "127.0.0.1:$SHOP_PORT" >"$WORK/django.log" 2>&1 &
PIDS+=($!)
"$PY" -m celery -A shop_site worker -Q "$SHOP_CELERY_QUEUE" --pool solo -l info \
    --without-gossip --without-mingle >"$WORK/celery.log" 2>&1 &
PIDS+=($!)

# docs/varnish.vcl with this run's backend port and purge token.
sed -e "s/\.port = \"8000\";/.port = \"$SHOP_PORT\";/" \
    -e "s/\"CHANGE-ME-purge-token\"/\"$SHOP_VARNISH_TOKEN\"/" \
    "$REPO/docs/varnish.vcl" >"$WORK/default.vcl"
grep -q "\"$SHOP_VARNISH_TOKEN\"" "$WORK/default.vcl" || die "docs/varnish.vcl lost its token line"
"$VARNISHD" -F -j none -n "$WORK/varnish" -a "127.0.0.1:$VARNISH_PORT" -T none \
    -f "$WORK/default.vcl" -s malloc,64m -p "vmod_path=$VMOD_DIR" >"$WORK/varnish.log" 2>&1 &
PIDS+=($!)

wait_for "http://127.0.0.1:$SHOP_PORT/" Django "$WORK/django.log"
wait_for "http://127.0.0.1:$VARNISH_PORT/" Varnish "$WORK/varnish.log"
for _ in $(seq 1 150); do grep -q "ready" "$WORK/celery.log" && break; sleep 0.2; done
grep -q "ready" "$WORK/celery.log" || { tail -n 40 "$WORK/celery.log" >&2; die "no Celery worker"; }

V="http://127.0.0.1:$VARNISH_PORT"
if [ "$SMOKE" = 1 ]; then
    echo "== smoke test through Varnish"
    xcache() { curl -s -o /dev/null -D - "$V$1" | tr -d '\r' | sed -n 's/^X-Cache: //Ip'; }
    first="$(xcache /products/1/)"; second="$(xcache /products/1/)"
    echo "   /products/1/: $first then $second"
    [ "$second" = HIT ] || die "the second request was not a Varnish hit"
    xcache /categories/coffee/ >/dev/null
    price="$("$PY" -c 'import random; print(f"{random.randint(100, 999)}.{random.randint(10, 99)}")')"
    "$PY" manage.py shell -c \
        "from shop.models import Product; p = Product.objects.get(pk=1); p.price = '$price'; p.save()"
    for _ in $(seq 1 50); do
        curl -s "$V/products/1/" | grep -q "\$$price" && break
        sleep 0.2
    done
    curl -s "$V/products/1/" | grep -q "\$$price" || die "Varnish still serves the old price"
    curl -s "$V/categories/coffee/" | grep -q "\$$price" || die "the category page is stale"
    echo "   saved price $price: product and category pages fresh through Varnish"
    grep "tiercache:varnish\|tiercache:console" "$WORK/celery.log" | tail -n 3 || true
    priv="$(curl -s -o /dev/null -D - "$V/account/" | tr -d '\r' | grep -i '^cache-control:')"
    echo "   /account/: $priv"
    echo "smoke test passed"
    exit 0
fi

cat <<EOF

  Through Varnish:  $V/            (X-Cache: MISS, then HIT)
  Django directly:  http://127.0.0.1:$SHOP_PORT/
  Admin:            $V/admin/      (user: admin, password: admin)
  Try:              curl -sI $V/products/1/
  Then edit a product in the admin: the worker purges its page and its category page at Varnish.
  Logs:             $WORK/{django,celery,varnish}.log   (Ctrl-C stops everything this started)

EOF
tail -n 0 -f "$WORK/celery.log" &
PIDS+=($!)
wait "${PIDS[0]}"
