#!/usr/bin/env bash
# The wheel works on its own: build it, install it into a throwaway venv (its dependencies are the
# checkout venv's, installed from the same pinned lock), and, from a folder outside the checkout,
# run every command and open the app on the caches shipped inside the package. Run by `make test` (`make wheel-check` alone).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-$root/.venv/bin/python}"
work="$(mktemp -d /tmp/diet-wheel-check.XXXXXX)"
trap 'kill ${app_pid:-0} 2>/dev/null || true; rm -rf "$work" "$root/build"' EXIT
cd "$root"
rm -rf build; "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>&1 | grep -v '^WARNING: Location' || true
wheel="$(ls "$work"/dist/diet_explore-*.whl)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-deps "$wheel" 2>&1 | grep -v '^WARNING: Location' || true
# Dependencies come from the checkout's venv, which `make setup` installed from the same lock
# (requirements.txt, constraints.txt and the asset packages): a .pth line puts its site-packages
# after the throwaway venv's own, so diet_explore itself imports from the wheel (a .pth line adds a
# path without running that folder's .pth files, so the checkout's editable finder stays off).
deps="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" >"$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-checkout-deps.pth"
cd "$work"  # outside the checkout: nothing of it is importable from here
bin="$work/venv/bin"
# every dependency the wheel declares is installed at a version it accepts
"$work/venv/bin/python" - <<'PY'
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
bad = []
for line in requires("diet-explore") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra
    try:
        have = version(req.name)
    except PackageNotFoundError:
        bad.append(f"{req} (not installed)")
        continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (have {have})")
assert not bad, "the wheel declares dependencies the lock does not satisfy: " + "; ".join(bad)
import diet_explore, diet_explore_app, sys
for pkg in (diet_explore, diet_explore_app):
    assert pkg.__file__.startswith(sys.prefix), f"{pkg.__name__} imports from {pkg.__file__}, not the wheel"
PY
export DIET_EXPLORE_HOME="$work/home" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DIET_EXPLORE_RUNS_DIR="$work/runs"
mkdir -p "$DIET_EXPLORE_HOME/models"
# the converted default model is data, not code: reuse the checkout's instead of converting again (a minute)
[ -d "$root/.store/models/smollm2-135m" ] && cp -r "$root/.store/models/smollm2-135m" "$DIET_EXPLORE_HOME/models/"
cache="$("$bin/python" -c 'import importlib.util as u; print(list(u.find_spec("diet_explore_caches").submodule_search_locations)[0])')/smollm2-135m"
case "$cache" in "$root"*) echo "the packaged cache resolves into the checkout ($cache)"; exit 1;; esac
"$bin/diet-explore" --version
# every command's --help, in one process of the installed entry point (eleven processes cost ~12 s)
"$bin/python" - <<'PY'
import contextlib, io
from diet_explore.cli import main
for command in "models tasks profile mask agreement stability dim prune eval compare app".split():
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main([command, "--help"])
    assert "usage:" in out.getvalue(), command
PY
"$bin/diet-explore" models | head -3
"$bin/diet-explore" tasks | head -3
"$bin/diet-explore" mask --cache "$cache" --sparsity 0.2 --exact --multiple-of 9 --out mask.json
"$bin/diet-explore" agreement --cache "$cache" --sparsity 0.2 --format json >/dev/null
"$bin/diet-explore" stability --cache "$cache" --sparsity 0.2 --resamples 10 --counts 10 --curve-resamples 2 >/dev/null
"$bin/diet-explore" dim --cache "$cache" --dim 507 --resamples 10 | head -3
"$bin/diet-explore" prune --model smollm2-135m --mask mask.json --out pruned | tail -1
"$bin/diet-explore" eval --model pruned --compare-to smollm2-135m --tasks rte --limit 2 --no-perplexity --workers 1 | tail -3
"$bin/diet-explore" profile --model smollm2-135m --tasks rte --samples 2 --no-generic --sites residual --out profiled >/dev/null 2>&1
"$bin/diet-explore" compare --model smollm2-135m --cache profiled --sparsity 0.5 --methods random --tasks rte --limit 2 \
    --no-perplexity --out sweep >/dev/null 2>&1
test -s sweep/table.md && test -s profiled/manifest.json
# the app, as a pip user starts it, from a folder without caches: it must open on the packaged default cache
"$bin/python" - <<'PY'
from streamlit.testing.v1 import AppTest
import importlib.util as u
app = list(u.find_spec("diet_explore_app").submodule_search_locations)[0] + "/app.py"
assert __import__("pathlib").Path(app).with_name("favicon.png").is_file(), "the wheel lacks the app's favicon"
at = AppTest.from_file(app, default_timeout=120).run()
assert not at.exception, [e.value for e in at.exception]
shown = {m.label: m.value for m in at.metric}
assert shown.get("Model") == "smollm2-135m" and shown.get("Hidden size") == "576", shown
print("app opens on the packaged cache:", shown["Model"], shown["Hidden size"])
PY
port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/diet-explore" app --port "$port" --host 127.0.0.1 >app.log 2>&1 &
app_pid=$!
for _ in $(seq 60); do curl -fs "http://127.0.0.1:$port/_stcore/health" >/dev/null 2>&1 && break; sleep 1; done
curl -fs "http://127.0.0.1:$port/_stcore/health" >/dev/null || { cat app.log; exit 1; }
echo "wheel check passed: $(basename "$wheel")"
