#!/usr/bin/env bash
# Build and drive the A1111/Forge tab (sdwebui/ui.py) under real Gradio releases, each in its own venv.
#
#   bash tools/check_gradio_versions.sh                 # gradio 3.41.2 (A1111) and 4.44.1 (Forge)
#   bash tools/check_gradio_versions.sh 3.41.2          # one version
#   KEEP_ENVS=0 bash tools/check_gradio_versions.sh     # delete each venv after its run
#
# Each version gets .gradio_envs/<version>/ (git-ignored; the project's .venv is never touched): torch first
# (exactly torch==$TORCH_VERSION, the CPU wheel when one is on disk), then this checkout (editable) with that gradio
# and pytest in one resolve, under a constraint that forbids any other torch. Then tests/test_sdwebui_ui.py runs with
# STYLECLOAK_REQUIRE_GRADIO=1, so the Blocks tests fail instead of skipping if gradio does not import.
# Gradio 4.x imports huggingface_hub.HfFolder, which huggingface_hub 1.0 removed; Forge pins an older hub, and so
# does its venv here (huggingface_hub<1, which also selects a transformers 4.x that accepts it).
# Prints one "gradio <version>: PASS|FAIL ..." line per version and exits non-zero if any failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ENVS="$ROOT/.gradio_envs"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
KEEP_ENVS="${KEEP_ENVS:-1}"
if [ "$#" -gt 0 ]; then VERSIONS=("$@"); else VERSIONS=(3.41.2 4.44.1); fi

mkdir -p "$ENVS"
summary=()
failed=0

torch_version() { "$1/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null; }

RESULT=""
check_one() {  # $1 = gradio version; sets RESULT to its summary line
    local ver="$1" env="$ENVS/$1" log="$ENVS/$1.log" constraint="$ENVS/$1.constraints.txt" before after rc
    echo "torch==$TORCH_VERSION" > "$constraint"
    case "$ver" in 3.*) ;; *) echo "huggingface_hub<1" >> "$constraint" ;; esac
    echo "=== gradio $ver in $env (log: $log)"
    : > "$log"
    [ -x "$env/bin/python" ] || "$PYTHON" -m venv "$env" >>"$log" 2>&1 \
        || { RESULT="gradio $ver: FAIL (venv creation, see $log)"; return 1; }
    # 1. torch first, exactly this version (pip's find-links put the CPU wheel first when it is on disk).
    "$env/bin/python" -m pip install -q "torch==$TORCH_VERSION" >>"$log" 2>&1 \
        || { RESULT="gradio $ver: FAIL (torch install, see $log)"; return 1; }
    before="$(torch_version "$env")"
    # 2. this checkout + gradio + pytest in one resolve; the constraint makes pip fail rather than change torch.
    PIP_CONSTRAINT="$constraint" "$env/bin/python" -m pip install -q -e "$ROOT" "gradio==$ver" pytest \
        >>"$log" 2>&1 || { RESULT="gradio $ver: FAIL (install of gradio==$ver + stylecloak, see $log)"; return 1; }
    after="$(torch_version "$env")"
    if [ -z "$before" ] || [ "$before" != "$after" ]; then
        RESULT="gradio $ver: FAIL (torch changed: '$before' -> '$after'; stopped)"; return 1
    fi
    echo "torch $after, gradio $("$env/bin/python" -c 'import gradio; print(gradio.__version__)' 2>>"$log")"
    # 3. the tab's tests, Blocks included (no skip allowed).
    (cd "$ROOT" && PYTHONPATH=. HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False STYLECLOAK_REQUIRE_GRADIO=1 \
        "$env/bin/python" -m pytest -q tests/test_sdwebui_ui.py -p no:cacheprovider -rs) 2>&1 | tee -a "$log"
    rc="${PIPESTATUS[0]}"
    if [ "$rc" -eq 0 ]; then
        RESULT="gradio $ver: PASS ($(grep -E '[0-9]+ passed' "$log" | tail -1))"
    else
        RESULT="gradio $ver: FAIL (pytest exit $rc, see $log)"; return 1
    fi
}

for ver in "${VERSIONS[@]}"; do
    check_one "$ver"
    echo "$RESULT"
    summary+=("$RESULT")
    case "$RESULT" in *PASS*) ;; *) failed=1 ;; esac
    if [ "$KEEP_ENVS" = "0" ]; then rm -rf "${ENVS:?}/$ver"; fi
done

echo
echo "Gradio compatibility of the StyleCloak tab (torch $TORCH_VERSION, $("$PYTHON" --version 2>&1)):"
printf '%s\n' "${summary[@]}"
exit "$failed"
