"""A page's form in the address bar: query parameters named like its config fields set the form when
they change (a shared link, or another page opening a view here), and the form writes its values back,
so the URL always reproduces the view."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import streamlit as st

from proxyfda.errors import ProxyFDAError


def apply_query_params(defaults: Mapping[str, Any], prefix: str, check: Callable[[dict], Any] | None = None) -> None:
    """Copy query parameters named in ``defaults`` into the widget keys ``prefix + name``, when the URL has
    changed since they were last copied. Each value is cast to its default's type and, with the form's
    other values, passed to ``check`` (which raises `ProxyFDAError` for a bad one); a value that fails is
    reported on the page and left out."""
    given = {name: st.query_params[name] for name in defaults if name in st.query_params}
    applied_key = prefix + "query_applied"
    if not given or given == st.session_state.get(applied_key):
        return
    st.session_state[applied_key] = given
    for name, raw in given.items():
        kind = type(defaults[name])
        try:
            value = _parse(kind, raw)
        except ValueError:
            st.warning(f"Ignored '{name}={raw}' in the address: {name} must be {_KINDS[kind]}.")
            continue
        try:
            if check is not None:
                check({**{field: st.session_state[prefix + field] for field in defaults}, name: value})
        except (ValueError, ProxyFDAError) as exc:
            st.warning(f"Ignored '{name}={raw}' in the address: {exc}.")
            continue
        st.session_state[prefix + name] = value


#: what a value of each type that can fail to parse must look like
_KINDS = {int: "a whole number", float: "a number", bool: "true or false"}


def _parse(kind: type, raw: str) -> Any:
    """An address's text as a value of the default's type; a flag reads the words `write_query_params` writes
    (``True``/``False``) and their usual spellings, since ``bool("False")`` is True."""
    if kind is bool:
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if raw.lower() not in flags:
            raise ValueError(raw)
        return flags[raw.lower()]
    return kind(raw)


def write_query_params(values: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str) -> None:
    """Put every value that differs from its default in the address bar (and drop the others)."""
    shown = {name: str(value) for name, value in values.items() if value != defaults[name]}
    for name in defaults:
        if name in st.query_params and name not in shown:
            del st.query_params[name]
    st.query_params.update(shown)
    st.session_state[prefix + "query_applied"] = shown
