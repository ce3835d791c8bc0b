"""Federation: instances share signed attestations of what they scanned; each keeps its own trust.

Owns: this instance's Ed25519 key (keys), the attestation format (entries), the tables (store; on SQLite a
decision's two statements run through hotpath), publishing (publisher) and serving the feed (feed), pulling and
verifying peers' feeds (ingest, puller), the quorum rules (trust), the screening step (step) and the app wiring
(wiring). docs/FEDERATION.md is the wire format.

May import: proxy.screening, proxy.evidence, proxy.state, proxy.config, proxy.s3. Never proxy.front, proxy.jobs,
proxy.admin or proxy.commands (they import this package, not the other way round); proxy.screening never
imports it at module level: the step is handed to the pipeline by proxy.app.
"""
