"""The dashboard and the report: a sweep's state, charts, hosts and failures, seen in a browser.

Read from the store, never written. Optional (``pip install sheepdog_drmaa[dashboard]``): Jinja2
and Matplotlib are imported here alone, never by ``map`` or by a worker.

    data.py    typed views of a sweep, read from the store
    plots.py   the charts, as inline SVG (Matplotlib)
    pages.py   the pages, from the templates (Jinja2)
    app.py     the live dashboard: a read-only Werkzeug app, with a token off loopback
"""
