"""Server-rendered pages (Jinja2): sign-in and account now; the web UI builds on them.

Nothing is loaded from elsewhere (no CDN, no web fonts): the pages work in
hospital networks without internet access and under a strict
Content-Security-Policy.
"""
