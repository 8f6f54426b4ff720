#!/bin/bash
# Runs once, when the MariaDB container initialises its data directory: creates the
# least-privilege user ingress and workers connect as. The migrating user (schema
# owner) is MARIADB_USER, made by the image itself; root has a random password.
set -euo pipefail
mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" <<SQL
CREATE USER IF NOT EXISTS 'chatfleet'@'%' IDENTIFIED BY '${CHATFLEET_DB_PASSWORD}';
GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON \`${MARIADB_DATABASE}\`.* TO 'chatfleet'@'%';
SQL
