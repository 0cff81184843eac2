#!/usr/bin/env bash
# Prints the exports `make run DESTINATIONS=FILE` evaluates: OPTOUT_DESTINATIONS_FILE=FILE
# and the development credentials of FILE's sibling `.env` file (FILE without `.toml`, plus
# `.env`), when there is one. A variable already set in the environment is kept.
set -eu
file="$(realpath "$1")"
printf 'export OPTOUT_DESTINATIONS_FILE=%q\n' "$file"
dev_env="${file%.toml}.env"
[ -f "$dev_env" ] || exit 0
while IFS= read -r line; do
    case "$line" in '' | '#'* | [!A-Za-z_]*) continue ;; esac
    key="${line%%=*}" value="${line#*=}"
    if [ -z "${!key:-}" ]; then printf 'export %s=%q\n' "$key" "$value"; fi
done < "$dev_env"
