#!/usr/bin/env bash
# Install Chromium (Debian's chromium package) if it is missing, for the dashboard's browser
# test (tests/test_dashboard_browser.py). Playwright drives this system browser, passed as its
# executable: Playwright's own browser download is not used.
exec bash "$(dirname "$0")/apt-ensure.sh" chromium chromium
