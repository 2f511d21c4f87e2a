"""The dashboard page. Streamlit runs this file; start it with ``python -m loginpipe.dashboard``.

Every ``--refresh`` seconds the live part redraws from the feed's latest records. The feed is
one per server process (``st.cache_resource``), shared by every open browser tab.
"""

from __future__ import annotations

import sys

import altair as alt
import pandas as pd
import streamlit as st

from loginpipe.dashboard.cli import dashboard_settings
from loginpipe.dashboard.feed import DashboardSettings, Feed
from loginpipe.dashboard.tiles import STATE_TILES
from loginpipe.dashboard.view import DISCONNECTED, LIVE, View, figure, headline
from loginpipe.topics import plural

RECENT_COLUMNS = ["login_time", "user_id", "device_type", "app_version", "locale", "region", "ip",
                  "risk_level", "risk_factors", "processing_delay_seconds"]


@st.cache_resource
def feed(settings: DashboardSettings) -> Feed:
    return Feed(settings).start()


def bars(data: dict, label: str, value: str = "logins", sort: bool = True) -> None:
    frame = pd.DataFrame({label: list(data), value: list(data.values())})
    if frame.empty:
        st.caption("no data yet")
        return
    order = "-y" if sort else None
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X(f"{label}:N", sort=order, title=None), y=alt.Y(f"{value}:Q", title=value),
        tooltip=[label, value])
    st.altair_chart(chart, width="stretch")


def us_tiles(by_locale: dict) -> None:
    """Logins per US state on a tile grid (one square per state, no map download needed)."""
    frame = pd.DataFrame([{"state": code, "col": col, "row": row, "logins": by_locale.get(code, 0)}
                          for code, (col, row) in STATE_TILES.items()])
    base = alt.Chart(frame).encode(x=alt.X("col:O", axis=None), y=alt.Y("row:O", axis=None))
    squares = base.mark_rect(stroke="white").encode(
        color=alt.Color("logins:Q", scale=alt.Scale(scheme="blues"), legend=None),
        tooltip=["state", "logins"])
    labels = base.mark_text(fontSize=11).encode(text="state:N")
    st.altair_chart((squares + labels).properties(height=300), width="stretch")


def timeline(metrics: list[dict], columns: dict[str, str], title: str, unit: str) -> None:
    """Lines over time from the metrics topic, one per column."""
    if not metrics:
        st.caption(f"{title}: no metrics yet")
        return
    rows = [{"time": pd.to_datetime(m["epoch_s"], unit="s"), "series": label, unit: m.get(key, 0)}
            for m in metrics for key, label in columns.items()]
    chart = alt.Chart(pd.DataFrame(rows)).mark_line(point=len(metrics) < 30).encode(
        x=alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
        y=alt.Y(f"{unit}:Q", title=unit, axis=alt.Axis(format=",.0f")),
        color=alt.Color("series:N", title=None),
        tooltip=["time:T", "series:N", f"{unit}:Q"])
    st.caption(title)
    st.altair_chart(chart.properties(height=220), width="stretch")


def header(view: View) -> None:
    if view.status == DISCONNECTED:
        st.error(f"● disconnected: {view.error or 'the broker does not answer'}; retrying")
    elif view.status == LIVE:
        updated = view.summary.get("updated_at", "")
        state = "stopped" if view.summary.get("final") else "running"
        scope = f", state of {plural(view.partitions, 'partition')}" if view.partitions else ""
        st.success(f"● live: {plural(len(view.instances), 'pipeline instance')}{scope}, {state}, "
                   f"updated {updated}")
    else:
        st.info(f"● waiting for the pipeline: {view.error or 'no summary snapshot yet'}")


def totals(view: View) -> None:
    row = headline(view)
    for cell, (label, text) in zip(st.columns(len(row)), row, strict=True):
        cell.metric(label, text)


def details(view: View) -> None:
    s = view.summary or {}
    cols = st.columns(3)
    with cols[0]:
        timeline(view.metrics, {"messages_per_second": "consumed"}, "throughput", "messages/s")
    with cols[1]:
        timeline(view.metrics, {"end_to_end_ms_p50": "p50", "end_to_end_ms_p99": "p99"},
                 "end-to-end latency (record timestamp to processed)", "ms")
    with cols[2]:
        timeline(view.metrics, {"consumer_lag": "lag"}, "consumer lag", "records")
    cols = st.columns(3)
    with cols[0]:
        st.subheader("dead letters by reason")
        bars(s.get("dead_lettered_by", {}), "reason", "records")
    with cols[1]:
        st.subheader("filtered by reason")
        bars(s.get("filtered_by", {}), "reason", "records")
    with cols[2]:
        st.subheader("risk levels")
        bars(s.get("risk_levels", {}), "level", sort=False)
    cols = st.columns(3)
    with cols[0]:
        st.subheader("device type")
        bars(s.get("by_device_type", {}), "device type")
    with cols[1]:
        st.subheader("app version")
        bars(s.get("by_app_version", {}), "version")
    with cols[2]:
        st.subheader("region")
        bars(s.get("by_region", {}), "region", sort=False)
    left, right = st.columns([3, 2])
    with left:
        st.subheader("logins by US state")
        us_tiles(s.get("by_locale", {}))
    with right:
        st.subheader("top locales")
        bars(dict(list(s.get("by_locale", {}).items())[:12]), "locale")
    left, right = st.columns(2)
    with left:
        st.subheader("hour of day (UTC)")
        bars({f"{h:02d}": n for h, n in enumerate(s.get("by_hour_of_day", []))}, "hour", sort=False)
    with right:
        st.subheader("daily")
        bars(s.get("by_date", {}), "date", sort=False)
    cols = st.columns(2)
    with cols[0]:
        st.metric("multi-IP users", figure(s.get("multi_ip_users")))
        st.dataframe(pd.DataFrame(s.get("top_multi_ip_users", [])), hide_index=True, width="stretch")
    with cols[1]:
        st.metric("shared devices", figure(s.get("shared_devices")))
        st.dataframe(pd.DataFrame(s.get("top_shared_devices", [])), hide_index=True, width="stretch")
    st.subheader("most recent processed records")
    recent = pd.DataFrame(view.recent)
    if recent.empty:
        st.caption("none yet")
    else:
        shown = [c for c in RECENT_COLUMNS if c in recent.columns]
        st.dataframe(recent[shown], hide_index=True, width="stretch")


def main() -> None:
    settings = dashboard_settings(sys.argv[1:])
    st.set_page_config(page_title="loginpipe dashboard", page_icon="📈", layout="wide")
    st.title("loginpipe: logins, live")
    st.caption(f"{settings.bootstrap_servers} · summary {settings.summary_topic} · metrics "
               f"{settings.metrics_topic} · records {settings.output_topic}"
               + (f" · group {settings.group_id}" if settings.group_id else ""))
    source = feed(settings)

    @st.fragment(run_every=settings.refresh_s)
    def live() -> None:
        view = source.view()
        header(view)
        totals(view)
        if view.summary is not None or view.metrics:
            details(view)

    live()


main()
