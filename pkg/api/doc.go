// Package api is ctagent's read-only JSON HTTP API, served next to
// /metrics by pkg/server (so the same web config, TLS and basic auth,
// protects it), and its client, which "ctagent list" and "ctagent top"
// use:
//
//   - GET /api/v1/namespaces: the health of every namespace's conntrack
//     table (entries by family and protocol, created, destroyed and failed
//     totals, the table limit and fill ratio), the largest tables first,
//     from metrics.Exporter.Snapshot: the numbers a scrape exports.
//   - GET /api/v1/entries: the conntrack entries of every namespace, or of
//     those a Filter selects, as JSON lines (eventjson.Entry), dumped with
//     tracer.Table.DumpTable one namespace after the other and written as
//     they are read: the daemon never holds a whole table, and stops when
//     the client goes away.
//
// docs/api.md documents the endpoints and fields. The package links no
// tracer backend: the daemon hands it the running tracer's Table.
package api
