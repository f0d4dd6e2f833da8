#!/bin/sh
# Entrypoint wrapper of every docker-compose.yml service: refuse to start while a secret is still
# the .env.example placeholder ("change-me") or empty, then run the service's own command.
# Checks every variable named like a secret (PASSWORD, TOKEN, SECRET) and every value that
# embeds one (a database URL with the placeholder as its password).
set -eu
bad=""
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
    value=$(printenv "$name" || true)
    case "$name" in
        *PASSWORD*|*TOKEN*|*SECRET*)
            if [ -z "$value" ] || [ "$value" = "change-me" ]; then bad="$bad $name"; continue; fi ;;
    esac
    case "$value" in
        *change-me*) bad="$bad $name" ;;
    esac
done
if [ -n "$bad" ]; then
    echo "refusing to start: replace the change-me placeholder (or empty value) of:$bad in .env" >&2
    exit 1
fi
exec "$@"
