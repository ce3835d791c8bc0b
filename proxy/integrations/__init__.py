"""The loop back to the services around the bucket: pict-rs (purging what was caught after it landed) and
Lemmy (who uploaded a caught file, and which post or comment uses it).

Owns: pict-rs's admin API client and the object key -> alias resolution (pictrs.py), read-only
attribution from Lemmy's database (lemmy.py). May import: proxy.config, proxy.evidence, proxy.state.
Imported by: proxy.jobs (after a hit is moved to quarantine), proxy.commands and proxy.admin (attribution).
"""
