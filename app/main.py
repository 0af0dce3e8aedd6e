"""The Streamlit entry point: a thin router over the pages in ../pages.

Run with `proxyfda app` (or `streamlit run app/main.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the pages import `app.*` and `proxyfda.*` from the checkout
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import session  # noqa: E402
from app.routes import DRIFT_EXPLORER, LIVE_FINETUNE, PROXY_DEBUGGER, TEACHING  # noqa: E402

st.set_page_config(page_title="proxyfda", page_icon=str(ROOT / "assets" / "icon.png"), layout="wide")

# One entry per page; each is a script in pages/.
PAGES = {
    "Explore": [
        st.Page(DRIFT_EXPLORER, title="Drift Explorer", icon=":material/scatter_plot:", default=True),
        st.Page(LIVE_FINETUNE, title="Live fine-tune", icon=":material/model_training:"),
        st.Page(PROXY_DEBUGGER, title="Proxy debugger", icon=":material/bug_report:"),
    ],
    "Learn": [
        st.Page(TEACHING, title="Teaching", icon=":material/school:"),
    ],
}

session.keep_widget_values()  # a page's settings survive a visit to another page
st.navigation(PAGES).run()
