"""Where the pages live: the router (app/main.py) lists them and pages link to each other through these."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIFT_EXPLORER = ROOT / "pages" / "drift_explorer.py"
LIVE_FINETUNE = ROOT / "pages" / "live_finetune.py"
PROXY_DEBUGGER = ROOT / "pages" / "proxy_debugger.py"
TEACHING = ROOT / "pages" / "teaching.py"
#: the trade-off sweep's committed results (benchmarks/tradeoff.py), drawn on the Live fine-tune page
TRADEOFF_RESULTS = ROOT / "docs" / "results" / "tradeoff" / "tradeoff.json"
