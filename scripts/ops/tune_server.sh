#!/usr/bin/env bash
# tune_server.sh: tune.sh --role server (see tune.sh; --help).
exec "$(dirname "$0")/tune.sh" --role server "$@"
