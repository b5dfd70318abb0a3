#!/usr/bin/env bash
# Clean-machine check (issue 18): a fresh clone and a fresh venv run the README's two commands
# verbatim, then `pip install .` in another fresh venv gives a working `timbre`. Prints times.
#
#   bash bench/clean_machine.sh [REPO]      (REPO: what to clone; default this checkout)
#
# The studio command is run as written and stopped once http://127.0.0.1:$PORT answers (the
# README's first command ends by starting it). Needs ../shared beside the clone for the tests:
# it is linked from this checkout's parent. Set SKIP_TESTS=1 to skip the (10 min) test suite.
set -euo pipefail
src="$(cd "${1:-$(dirname "$0")/..}" && pwd)"
shared="$(cd "$src/.." && pwd)/shared"
work="$(mktemp -d /tmp/timbre-clean.XXXXXX)"
PORT="${PORT:-7860}"
echo "work dir: $work"
now() { date +%s; }
t_all=$(now)

# README's commands, read from the README itself so that this stays verbatim.
setup_cmd="$(grep -m1 '^bash scripts/setup.sh' "$src/README.md" | sed 's/ *#.*//')"
test_cmd="$(grep -m1 '^bash scripts/test.sh' "$src/README.md" | sed 's/ *#.*//')"
[ -n "$setup_cmd" ] && [ -n "$test_cmd" ] || { echo "README lacks the two commands" >&2; exit 1; }

git clone -q "$src" "$work/timbre"
[ -d "$shared" ] && ln -s "$shared" "$work/shared"
cd "$work/timbre"
python3 -m venv "$work/venv1"
# shellcheck disable=SC1091
. "$work/venv1/bin/activate"

t0=$(now)
setsid bash -c "$setup_cmd" >"$work/setup.log" 2>&1 &
pid=$!  # its own process group: the studio it ends in is stopped with it
until curl -fsS "http://127.0.0.1:$PORT/" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "setup/studio exited early; tail of $work/setup.log:" >&2; tail -20 "$work/setup.log" >&2; exit 1
    fi
    sleep 2
done
echo "1. $setup_cmd: studio answering after $(( $(now) - t0 )) s"
kill -- "-$pid"; wait "$pid" 2>/dev/null || true

if [ "${SKIP_TESTS:-0}" != "1" ]; then
    t0=$(now)
    eval "$test_cmd" | tail -3
    echo "2. $test_cmd: $(( $(now) - t0 )) s"
fi
deactivate

t0=$(now)
python3 -m venv "$work/venv2"
"$work/venv2/bin/pip" install -q "torch==2.13.0"
"$work/venv2/bin/pip" install -q .
echo "3. pip install . (fresh venv, torch first): $(( $(now) - t0 )) s"
cd "$work"
"$work/venv2/bin/timbre" --version
"$work/venv2/bin/timbre" convert --help | head -2
"$work/venv2/bin/timbre" studio --help | head -2
echo "total: $(( $(now) - t_all )) s (work dir $work)"
