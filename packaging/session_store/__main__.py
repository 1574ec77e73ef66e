"""``python -m session_store`` when installed as a package (the vendored file runs as is)."""

from session_store import main

raise SystemExit(main())
