#!/usr/bin/env bash
# Install what the MLflow UI tests drive: Debian's chromium (apt) and playwright-core (npm)
# into .cache/ui-test-node/. Playwright's own browser download is not used: the tests
# launch /usr/bin/chromium. Idempotent and quick when everything is already there.
#
#   bash scripts/install_ui_test_deps.sh        # prints the node_modules directory to use
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_DIR=.cache/ui-test-node
MODULE=$NODE_DIR/node_modules/playwright-core/package.json

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[ui-test-deps] missing ${need_apt[*]}: run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "[ui-test-deps] apt-get install ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# playwright-core 1.65 needs node >= 20; Debian 12's own nodejs is 18, which 1.49 supports.
if [[ -z ${XKD_PLAYWRIGHT_VERSION:-} ]] && (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
  PLAYWRIGHT_VERSION=1.49.1
else
  PLAYWRIGHT_VERSION=${XKD_PLAYWRIGHT_VERSION:-1.65.1}
fi
if ! grep -qs "\"version\": \"$PLAYWRIGHT_VERSION\"" "$MODULE"; then
  echo "[ui-test-deps] npm install playwright-core@$PLAYWRIGHT_VERSION into $NODE_DIR" >&2
  mkdir -p "$NODE_DIR"
  [[ -f $NODE_DIR/package.json ]] || echo '{"private": true}' > "$NODE_DIR/package.json"
  # playwright-core never downloads browsers on install; the flag documents the intent.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent \
    "playwright-core@$PLAYWRIGHT_VERSION" >&2
fi
realpath "$NODE_DIR/node_modules"
