#!/usr/bin/env bash
# tune_client.sh: tune.sh --role client (see tune.sh; --help).
exec "$(dirname "$0")/tune.sh" --role client "$@"
