#!/usr/bin/env bash
# Makes sure MariaDB, RabbitMQ and Redis answer on localhost, starting each one that does
# not with the commands of DESIGN.md §11. Fails with a message naming the service that
# cannot be started. Sourced by scripts/up and scripts/test; also runnable on its own.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq 1 "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "error: $name did not come up within ${seconds}s" >&2
  return 1
}

mariadb_up() { port_open 3306 && mariadb -h 127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; }
redis_up() { port_open 6379 && [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" = PONG ]; }
rabbit_up() { port_open 5672; }

ensure_services() {
  if ! mariadb_up; then
    echo "starting MariaDB" >&2
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
      || { echo "error: cannot start MariaDB (/usr/sbin/mariadbd)" >&2; return 1; }
    wait_for MariaDB 60 mariadb_up || return 1
  fi
  if ! redis_up; then
    echo "starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log \
      || { echo "error: cannot start Redis (redis-server)" >&2; return 1; }
    wait_for Redis 30 redis_up || return 1
  fi
  if ! rabbit_up; then
    echo "starting RabbitMQ" >&2
    rabbitmq-server -detached || { echo "error: cannot start RabbitMQ (rabbitmq-server)" >&2; return 1; }
    wait_for RabbitMQ 120 rabbit_up || return 1
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  fi
}

# Headless Chromium and ChromeDriver for the widget's browser test (Debian packages).
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  echo "installing chromium and chromium-driver (once)" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; } \
    || { echo "error: cannot install chromium and chromium-driver with apt-get" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services && echo "MariaDB, RabbitMQ and Redis are up"
fi
