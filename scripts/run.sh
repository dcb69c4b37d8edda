#!/usr/bin/env bash
# Main job: set up (first run only), then `editseg demo` on the built-in default model.
# Extra arguments are passed to `editseg` instead, e.g. `bash scripts/run.sh segment photo.jpg "the dog"`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/setup.sh"
if [ "$#" -eq 0 ]; then set -- demo --out "$repo_root/outputs/demo"; fi
exec "$repo_root/.venv/bin/editseg" "$@"
